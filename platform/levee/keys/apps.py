from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "levee.keys"
    label = "keys"
