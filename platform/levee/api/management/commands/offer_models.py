"""Offer exactly the named models (what the inference workers serve); disable the rest.

Guarantees: one transaction; an unknown name changes nothing and exits non-zero. `--dry-run` says
what would change."""
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from levee.api.models import LlmModel
from levee.api.services import UnknownModels, offer_models


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="+")
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args: Any, names: list[str], dry_run: bool, **options: Any) -> None:
        if dry_run:
            rows = dict(LlmModel.objects.values_list("name", "enabled"))
            self.stdout.write(f"would enable {[n for n in names if rows.get(n) is False]}, "
                              f"disable {[n for n, on in rows.items() if on and n not in names]}")
            return
        try:
            enabled, disabled = offer_models(names)
        except UnknownModels as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"enabled {enabled or 'nothing new'}, disabled {disabled or 'nothing'}")
