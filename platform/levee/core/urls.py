"""Operations endpoints: readiness, Prometheus and the admin live dashboard (before admin's catch-all)."""
from django.urls import path

from levee.core import dashboard, views

urlpatterns = [
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/dashboard/", dashboard.dashboard_page, name="ops-dashboard"),
    path("admin/dashboard/data", dashboard.dashboard_data, name="ops-dashboard-data"),
]
