from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "levee.accounts"
    label = "accounts"
