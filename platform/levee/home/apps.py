from django.apps import AppConfig


class HomeConfig(AppConfig):
    """The public front page: what Levee serves, at what price, and the free chat allowance."""

    name = "levee.home"
    label = "home"
