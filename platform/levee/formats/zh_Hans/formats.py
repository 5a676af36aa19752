"""Simplified Chinese: Django's zh_Hans formats, with digits grouped in threes by commas as CLDR
(and so the browser's toLocaleString("zh-hans"), which updates counters on the chat page) does."""
from django.conf.locale.zh_Hans.formats import *  # type: ignore[import-untyped]  # noqa: F403

THOUSAND_SEPARATOR = ","
NUMBER_GROUPING = 3
