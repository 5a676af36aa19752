from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "levee.api"
    label = "api"

    def ready(self) -> None:
        from levee.api import monitoring
        from levee.core import dashboard, health, metrics

        metrics.register_state("models", monitoring.metric_families)
        dashboard.register_panel("models", monitoring.dashboard_panel)
        health.register_check("workers", monitoring.readiness)
