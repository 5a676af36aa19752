from django.apps import AppConfig


class ShieldConfig(AppConfig):
    name = "levee.shield"
    label = "shield"
    verbose_name = "Shield"

    def ready(self):
        from levee.shield import signals  # noqa: F401  (connects receivers)
