"""Create an API key for an account and print the key alone on stdout (for scripts).

Guarantees: the same rules as the web (verified account, the active-key cap); the secret is printed
once and only its digest is stored.
"""
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from levee.accounts.services import find_user
from levee.keys.services import KeyRefused, create_api_key


class Command(BaseCommand):
    help = "Create an API key: create_api_key EMAIL [--name N]"

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, email: str, name: str, **options: Any) -> None:
        user = find_user(email)
        if user is None:
            raise CommandError(f"no account with the address {email}")
        try:
            _, raw = create_api_key(user, name=name[:64])
        except KeyRefused as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(raw)
