from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "levee.core"
    label = "core"
