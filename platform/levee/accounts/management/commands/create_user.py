"""Create an account from the command line.

Guarantees: the address is validated and unique (case-insensitively); the password passes the same
validators as a sign-up; with --verified the account counts as verified (and gets what verification
brings, such as the sign-up credit). The password comes from a prompt or --password-file, never argv.
"""
import getpass
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from levee.accounts.services import create_user


class Command(BaseCommand):
    help = "Create a user: create_user EMAIL [--verified] [--staff] [--password-file PATH]"

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--verified", action="store_true", help="mark the email as verified")
        parser.add_argument("--staff", action="store_true", help="give admin access (staff and superuser)")
        parser.add_argument("--password-file", help="read the password from this file's first line")
        parser.add_argument("--no-password", action="store_true", help="create without a usable password")

    def handle(self, email: str, verified: bool, staff: bool, password_file: str | None, no_password: bool,
               **options: Any) -> None:
        password: str | None
        if no_password:
            password = None
        elif password_file:
            try:
                password = Path(password_file).read_text().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise CommandError(f"cannot read a password from {password_file}: {exc}") from None
        else:
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("the passwords differ")
        try:
            user = create_user(email, password, verified=verified, staff=staff)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"created {user.email} (id {user.pk}{', verified' if verified else ''}{', staff' if staff else ''})")
