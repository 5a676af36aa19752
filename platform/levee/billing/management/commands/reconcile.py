"""Prove every wallet's balance equals the sum of its ledger entries (and its holds and grants).

Guarantees: reads only; prints each discrepancy and exits non-zero if there is any, zero otherwise,
so cron or CI can alert on it.
"""
from django.core.management.base import BaseCommand, CommandError

from levee.billing.models import Wallet
from levee.billing.services import reconcile


class Command(BaseCommand):
    help = "Check every wallet against its ledger; exit non-zero on any discrepancy."

    def handle(self, **options: object) -> None:
        problems = reconcile()
        for problem in problems:
            self.stderr.write(str(problem))
        if problems:
            raise CommandError(f"{len(problems)} discrepancy(ies) found")
        self.stdout.write(f"{Wallet.objects.count()} wallet(s) reconcile with their ledger.")
