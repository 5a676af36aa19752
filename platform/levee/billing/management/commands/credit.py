"""Credit an account's topped-up balance (a manual top-up, e.g. a bank transfer received).

Guarantees: AMOUNT is a decimal string in LEVEE_CURRENCY parsed exactly (no floats); a reason is
required; the credit is one ledger entry plus an audit record, or nothing at all.
"""
from argparse import ArgumentParser

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from levee.accounts.services import find_user
from levee.billing.money import InvalidAmount, format_amount, parse_amount
from levee.billing.services import BillingRefused, adjust, wallet_for


class Command(BaseCommand):
    help = "Credit an account: credit EMAIL AMOUNT --reason R (AMOUNT like 12.50, in LEVEE_CURRENCY)"

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("email")
        parser.add_argument("amount", help="a positive decimal in the deployment's currency, e.g. 12.50")
        parser.add_argument("--reason", required=True, help="why; recorded in the ledger and the audit log")

    def handle(self, email: str, amount: str, reason: str, **_: object) -> None:
        try:
            nano = parse_amount(amount)
        except InvalidAmount as exc:
            raise CommandError(f"AMOUNT {amount!r}: {exc}") from None
        if not reason.strip() or len(reason) > 200:
            raise CommandError("--reason must be 1 to 200 characters")
        user = find_user(email)
        if user is None:
            raise CommandError(f"no account with the address {email}")
        try:
            entry = adjust(wallet_for(user), nano, actor=None, reason=reason, source="command")
        except BillingRefused as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Credited {format_amount(nano)} {settings.LEVEE_CURRENCY} to {user.email} "
                          f"(ledger entry {entry.pk}).")
