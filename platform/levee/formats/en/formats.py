"""English dates as the pages showed them before translations came: ISO order, 24-hour clock
(Django's own English formats are American: 12/01/2026 7:30 p.m.). Chinese uses Django's zh_Hans."""
DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
