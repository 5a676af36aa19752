from django.apps import AppConfig


class ShieldConfig(AppConfig):
    name = "levee.shield"
    label = "shield"
    verbose_name = "Shield"

    def ready(self) -> None:
        from levee.core import dashboard, metrics
        from levee.shield import monitoring, signals  # noqa: F401  (signals connects receivers)

        metrics.register_state("shield", monitoring.metric_families)
        dashboard.register_panel("mode", monitoring.dashboard_panel)
