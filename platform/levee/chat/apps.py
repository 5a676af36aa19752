from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "levee.chat"
    label = "chat"
