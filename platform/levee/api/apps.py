from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "levee.api"
    label = "api"
