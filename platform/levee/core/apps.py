from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "levee.core"
    label = "core"

    def ready(self) -> None:
        from levee.core import signals  # noqa: F401  (connects the receivers)
