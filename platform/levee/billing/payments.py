"""Top-ups through Stripe Checkout, and the top-up pause switch (docs/billing.md, "Top-ups").

An owner picks an amount; `start_checkout` makes a Checkout Session (the official `stripe`
library, against `STRIPE_API_BASE`) and the browser goes to Stripe's hosted page. Money arrives
only through the webhook: `handle_webhook` verifies Stripe's signature (HMAC-SHA256 over
"timestamp.body", a timestamp inside the tolerance window), records the event once (a replay or
redelivery of the same event id is answered without effect) and, in the same transaction,
credits the payment through `services.topup(..., external_id=<session id>)`, which credits a
payment once however many events or processes ask. Refunds and disputes take the money back
through ledger entries named after the refund total or the dispute, so each counts once whatever
order the events come in.
"""
from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from levee.billing import services
from levee.billing.models import (
    AuditEvent,
    LedgerEntry,
    LedgerKind,
    Payment,
    PaymentStatus,
    ProviderEvent,
    TopupSwitch,
    TopupSwitchChange,
    Wallet,
)
from levee.billing.money import Amount, format_amount, localized, parse_amount
from levee.billing.pricing import currency

if TYPE_CHECKING:
    import stripe

    from levee.accounts.models import User

log = logging.getLogger(__name__)

# Currencies Stripe top-ups are offered in: both have two-decimal minor units (cents, fen).
CURRENCIES = ("USD", "CNY")
NANO_PER_MINOR = 10**7
# start_checkout's return URLs carry this where the payment's id goes.
PLACEHOLDER = "00000000-0000-0000-0000-000000000000"
PAUSED_MESSAGE = ("Top-ups are paused for now. Your balance keeps working as usual; please try again later.")


# --- the pause switch -------------------------------------------------------------------------------

def switch() -> TopupSwitch:
    row, _ = TopupSwitch.objects.get_or_create(pk=1)
    return row


def set_topups_paused(paused: bool, *, reason: str, by: User | None = None, message: str = "") -> bool:
    """Pause (or resume) new top-ups, with a required reason, auditing the change in the same
    transaction. `message` is what owners are shown while paused. True if anything changed."""
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("a reason is required")
    message = (message or "").strip()[:300]
    with transaction.atomic():
        TopupSwitch.objects.get_or_create(pk=1)
        row = TopupSwitch.objects.select_for_update().get(pk=1)
        if row.paused == paused and row.message == message:
            return False
        TopupSwitchChange.objects.create(by=by, paused=paused, message=message, reason=reason)
        row.paused, row.message, row.changed_by, row.changed_at = paused, message, by, timezone.now()
        row.save(update_fields=["paused", "message", "changed_by", "changed_at"])
    return True


def paused_message() -> str | None:
    """The sentence owners see while top-ups are paused; None when they are not."""
    row = TopupSwitch.objects.filter(pk=1).first()
    if row is None or not row.paused:
        return None
    return row.message or PAUSED_MESSAGE


# --- offering and starting a top-up --------------------------------------------------------------

def enabled() -> bool:
    """Whether this deployment takes Stripe top-ups (keys configured, a supported currency)."""
    return bool(settings.STRIPE_SECRET_KEY and settings.STRIPE_WEBHOOK_SECRET) and currency() in CURRENCIES


def options() -> dict:
    """What the usage page offers: {"enabled", "paused", "currency", "amounts": [...], "min", "max"}."""
    return {"enabled": enabled(), "paused": paused_message(), "currency": currency(),
            "amounts": [format_amount(a, places=2) for a in amounts()],
            "min": format_amount(_minimum(), places=2), "max": format_amount(_maximum(), places=2)}


def amounts() -> list[int]:
    return [parse_amount(a) for a in settings.LEVEE_TOPUP_AMOUNTS]


def _minimum() -> int:
    return parse_amount(settings.LEVEE_TOPUP_MIN)


def _maximum() -> int:
    return parse_amount(settings.LEVEE_TOPUP_MAX)


def parse_topup_amount(text: object) -> int:
    """An owner's amount (a decimal string) → nano, inside [min, max] and in whole cents/fen.
    Raises BillingRefused naming the bounds."""
    bounds = {"low": Amount(_minimum()), "high": Amount(_maximum()), "currency": currency()}
    try:
        nano = parse_amount(str(text if text is not None else "").strip())
    except ValueError:
        raise services.BillingRefused("invalid_amount", gettext_noop(
            "Enter an amount between %(low)s and %(high)s %(currency)s, like 20 or 12.50."), status=400,
            params=bounds) from None
    if nano % NANO_PER_MINOR:
        raise services.BillingRefused("invalid_amount", gettext_noop("The amount may have at most two decimal places."),
                                      status=400)
    if not _minimum() <= nano <= _maximum():
        raise services.BillingRefused("amount_out_of_range", gettext_noop(
            "The amount must be between %(low)s and %(high)s %(currency)s."), params=bounds)
    return nano


def client() -> stripe.StripeClient:
    import stripe

    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE},
                               max_network_retries=2)


def start_checkout(user: User, amount_nano: int, *, success_url: str, cancel_url: str) -> Payment:
    """Make a Stripe Checkout Session for a top-up of `amount_nano` and the Payment that follows it.
    In the return URLs PLACEHOLDER becomes the payment's id and Stripe fills {CHECKOUT_SESSION_ID}. Raises BillingRefused
    (paused, not offered, unverified address, an amount outside the bounds); nothing is written
    unless Stripe made the session."""
    import stripe

    if not enabled():
        raise services.BillingRefused("topups_unavailable", gettext_noop("This deployment does not take card top-ups."), status=503)
    message = paused_message()
    if message:
        raise services.BillingRefused("topups_paused", message, status=503)
    if not user.is_verified:
        raise services.BillingRefused("email_not_verified", gettext_noop("Verify your email address before topping up."), status=403)
    if not _minimum() <= amount_nano <= _maximum() or amount_nano % NANO_PER_MINOR:
        raise services.BillingRefused("amount_out_of_range", gettext_noop("That amount is not offered."))
    cur = currency()
    minor = amount_nano // NANO_PER_MINOR
    payment = Payment(id=uuid.uuid4(), user=user, amount_nano=amount_nano, amount_minor=minor, currency=cur)
    ref = str(payment.id)
    try:
        session = client().v1.checkout.sessions.create(params={
            "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": cur.lower(), "unit_amount": minor,
                "product_data": {"name": f"Levee balance top-up ({format_amount(amount_nano, places=2)} {cur})"}}}],
            "client_reference_id": ref, "customer_email": user.email,
            "metadata": {"levee_payment": ref, "levee_user": str(user.pk)},
            "payment_intent_data": {"metadata": {"levee_payment": ref}},
            "success_url": success_url.replace(PLACEHOLDER, ref),
            "cancel_url": cancel_url.replace(PLACEHOLDER, ref),
        }, options={"idempotency_key": f"levee-checkout-{ref}"})
    except stripe.StripeError as exc:
        log.error("Stripe refused a checkout session for payment %s: %s", ref, exc)
        raise services.BillingRefused("payment_provider_error",
                                      gettext_noop("The payment provider could not start the payment; try again shortly."),
                                      status=502) from None
    payment.session_id = session.id
    with transaction.atomic():
        payment.save(force_insert=True)
        AuditEvent.objects.create(actor=user, action="checkout_started", source="owner",
                                  wallet=services.wallet_for(user), amount_nano=amount_nano,
                                  reason=f"Stripe Checkout session {session.id} for payment {ref}"[:200])
    payment.checkout_url = session.url or ""
    return payment


# --- the webhook ---------------------------------------------------------------------------------

class WebhookRefused(Exception):
    """A webhook that is not Stripe's (bad or missing signature, stale timestamp, not JSON)."""


def handle_webhook(payload: bytes, signature: str | None) -> str:
    """Verify and apply one webhook delivery. Returns what happened (for the log and the answer);
    raises WebhookRefused for a delivery that is not verifiably Stripe's and recent. The event is
    recorded and applied in one transaction: if applying fails, nothing is kept and Stripe's retry
    applies it later."""
    import stripe

    try:
        event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET,
                                               tolerance=settings.LEVEE_STRIPE_WEBHOOK_TOLERANCE)
    except (stripe.SignatureVerificationError, ValueError) as exc:
        raise WebhookRefused(str(exc).split("\n")[0][:200]) from None
    data = event.to_dict()
    obj = data.get("data", {}).get("object", {}) or {}
    pi = _payment_intent_of(data["type"], obj)
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = ProviderEvent.objects.create(event_id=data["id"], type=data["type"],
                                                      payment_intent=pi or "", payload=data)
        except IntegrityError:  # this event id was recorded before (a retry, a replay, a concurrent copy)
            return "duplicate event"
        outcome = _apply(record)
        ProviderEvent.objects.filter(pk=record.pk).update(outcome=outcome[:200])
    return outcome


def _payment_intent_of(kind: str, obj: dict) -> str | None:
    pi = obj.get("payment_intent")
    if isinstance(pi, dict):
        pi = pi.get("id")
    return pi if isinstance(pi, str) else None


def _apply(record: ProviderEvent) -> str:
    handler = _HANDLERS.get(record.type)
    if handler is None:
        _mark(record)
        return f"ignored {record.type}"
    return handler(record, record.payload["data"]["object"])


def _mark(record: ProviderEvent) -> None:
    record.applied_at = timezone.now()
    ProviderEvent.objects.filter(pk=record.pk).update(applied_at=record.applied_at)


def _session_completed(record: ProviderEvent, session: dict) -> str:
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        _mark(record)
        return "session completed, payment not yet made"
    ref = session.get("client_reference_id") or (session.get("metadata") or {}).get("levee_payment")
    try:
        payment = Payment.objects.select_for_update().get(pk=uuid.UUID(str(ref)))
    except (ValueError, Payment.DoesNotExist):
        log.error("Stripe session %s names no payment of ours (%r)", session.get("id"), ref)
        _mark(record)
        return "unknown payment"
    if (session.get("id") != payment.session_id or session.get("amount_total") != payment.amount_minor
            or str(session.get("currency", "")).upper() != payment.currency):
        log.error("Stripe session %s does not match payment %s", session.get("id"), payment.pk)
        _mark(record)
        return "session does not match the payment"
    if payment.status == PaymentStatus.CREDITED:
        _mark(record)
        return "already credited"
    wallet = services.wallet_for(payment.user)
    entry = services.topup(wallet, payment.amount_nano, source="stripe", external_id=session["id"],
                           reason=f"top-up via Stripe ({session.get('payment_intent') or session['id']})")
    payment.status, payment.entry, payment.credited_at = PaymentStatus.CREDITED, entry, timezone.now()
    payment.payment_intent = session.get("payment_intent") or None
    payment.receipt_sent_at = payment.credited_at
    payment.save(update_fields=["status", "entry", "credited_at", "payment_intent", "receipt_sent_at"])
    AuditEvent.objects.create(action="stripe_topup", source="stripe", wallet=wallet, amount_nano=payment.amount_nano,
                              entry=entry, reason=f"payment {payment.pk} (event {record.event_id})"[:200])
    _mark(record)
    transaction.on_commit(lambda: _send_receipt(payment))
    # Refunds or disputes of this payment that arrived before it was known: apply them now, in order.
    if payment.payment_intent:
        for early in (ProviderEvent.objects.select_for_update().filter(
                payment_intent=payment.payment_intent, applied_at__isnull=True).exclude(pk=record.pk)
                .order_by("received_at", "pk")):
            outcome = _apply(early)
            ProviderEvent.objects.filter(pk=early.pk).update(outcome=outcome[:200])
    return f"credited {format_amount(payment.amount_nano, places=2)} {payment.currency}"


def _payment_for(record: ProviderEvent) -> Payment | None:
    """The credited payment an event is about, locked; None (the event waits) while unknown."""
    if not record.payment_intent:
        return None
    return (Payment.objects.select_for_update().select_related("user")
            .filter(payment_intent=record.payment_intent, status=PaymentStatus.CREDITED).first())


def _charge_refunded(record: ProviderEvent, charge: dict) -> str:
    payment = _payment_for(record)
    if payment is None:
        return "waiting for its payment"
    total = int(charge.get("amount_refunded") or 0)  # Stripe's running total: order does not matter
    _mark(record)
    if total <= payment.refunded_minor:
        return "refund already counted"
    more = min(total, payment.amount_minor) - payment.refunded_minor
    payment.refunded_minor += more
    payment.save(update_fields=["refunded_minor"])
    taken = _take_back(payment, more * NANO_PER_MINOR, kind=LedgerKind.PAYBACK,
                       external_id=f"stripe:refund:{charge.get('id')}:{total}", why="refunded by Stripe")
    return f"refund of {format_amount(more * NANO_PER_MINOR, places=2)} taken back ({taken})"


def _dispute_created(record: ProviderEvent, dispute: dict) -> str:
    payment = _payment_for(record)
    if payment is None:
        return "waiting for its payment"
    _mark(record)
    amount = min(int(dispute.get("amount") or 0), payment.amount_minor)
    if amount <= 0:
        return "empty dispute"
    ref = f"stripe:dispute:{dispute.get('id')}"
    if LedgerEntry.objects.filter(external_id=ref).exists():
        return "dispute already counted"
    payment.disputed_minor += amount
    payment.save(update_fields=["disputed_minor"])
    taken = _take_back(payment, amount * NANO_PER_MINOR, kind=LedgerKind.PAYBACK, external_id=ref,
                       why=f"disputed ({dispute.get('reason') or 'no reason given'})")
    return f"dispute of {format_amount(amount * NANO_PER_MINOR, places=2)} taken back ({taken})"


def _dispute_closed(record: ProviderEvent, dispute: dict) -> str:
    payment = _payment_for(record)
    if payment is None:
        return "waiting for its payment"
    _mark(record)
    if dispute.get("status") != "won":
        return f"dispute closed ({dispute.get('status')})"
    taken_entry = LedgerEntry.objects.filter(external_id=f"stripe:dispute:{dispute.get('id')}").first()
    if taken_entry is None:  # never counted as taken: nothing to give back
        return "dispute won, nothing was taken"
    amount = min(int(dispute.get("amount") or 0), payment.amount_minor)
    payment.disputed_minor = max(0, payment.disputed_minor - amount)
    # What was not taken (already spent) stops being owed; what was taken comes back.
    owed = amount * NANO_PER_MINOR - (-taken_entry.topped_up_delta)
    payment.unrecovered_nano = max(0, payment.unrecovered_nano - owed)
    payment.save(update_fields=["disputed_minor", "unrecovered_nano"])
    back = -taken_entry.topped_up_delta
    if back > 0:
        services.topup(services.wallet_for(payment.user), back, source="stripe",
                       external_id=f"dispute-won:{dispute.get('id')}", reason="dispute won: money given back")
    return f"dispute won, {format_amount(back, places=2)} given back"


def _take_back(payment: Payment, nano: int, *, kind: str, external_id: str, why: str) -> str:
    """Debit money the provider took back. The rule when it was already spent: the free topped-up
    balance is taken, the rest is recorded as unrecovered on the payment, and the account is
    disabled (its keys stop working) until an operator settles it. Balances never go negative."""
    wallet = Wallet.objects.select_for_update(no_key=True).get(user=payment.user)
    free = max(0, min(wallet.topped_up_nano, wallet.available_nano))
    take = min(nano, free)
    now = timezone.now()
    entry = None
    if take:
        services._move(wallet, topped_up=-take, at=now)
        entry = LedgerEntry.objects.create(wallet=wallet, kind=kind, topped_up_delta=-take, external_id=external_id,
                                           reason=f"Stripe payment {payment.payment_intent} {why}"[:200],
                                           created_at=now)
    else:  # nothing to take, but the event is still recorded in the ledger's terms, once
        entry = LedgerEntry.objects.create(wallet=wallet, kind=kind, external_id=external_id,
                                           reason=f"Stripe payment {payment.payment_intent} {why}: nothing free to take"
                                           [:200], created_at=now)
    AuditEvent.objects.create(action="stripe_payback", source="stripe", wallet=wallet, amount_nano=-take, entry=entry,
                              created_at=now, reason=f"{why}: payment {payment.pk}"[:200])
    short = nano - take
    if short:
        payment.unrecovered_nano += short
        payment.save(update_fields=["unrecovered_nano"])
        user = payment.user
        user.is_active = False
        user.save(update_fields=["is_active"])  # through save: the key memo forgets the account
        AuditEvent.objects.create(action="account_blocked", source="stripe", wallet=wallet, amount_nano=-short,
                                  entry=entry, created_at=now,
                                  reason=(f"{why}: {format_amount(short, places=2)} {payment.currency} of payment "
                                          f"{payment.payment_intent} was already spent")[:200])
        return f"{format_amount(short, places=2)} already spent: account disabled"
    return "in full"


_HANDLERS = {
    "checkout.session.completed": _session_completed,
    "checkout.session.async_payment_succeeded": _session_completed,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
    "charge.dispute.closed": _dispute_closed,
}


def _send_receipt(payment: Payment) -> None:
    """The receipt, in the account's language (amount and date as it writes them)."""
    from django.utils import formats, translation
    from django.utils.translation import gettext

    with translation.override(payment.user.language or settings.LANGUAGE_CODE):
        words = {"amount": localized(payment.amount_nano), "currency": payment.currency,
                 "payment": payment.payment_intent or payment.session_id,
                 "date": formats.date_format(payment.credited_at or timezone.now(), "SHORT_DATETIME_FORMAT")}
        subject = gettext("Levee receipt: top-up of %(amount)s %(currency)s") % words
        body = gettext("Thank you. We received your payment of %(amount)s %(currency)s and added it to your Levee "
                       "balance.\n\nPayment: %(payment)s\nDate: %(date)s UTC\nAmount: %(amount)s %(currency)s\n\n"
                       "Your usage and ledger are on the Usage page.\n") % words
    try:
        send_mail(subject, body, None, [payment.user.email], fail_silently=False)
    except Exception:  # the credit stands; a lost receipt is logged, not retried forever
        log.exception("could not send the receipt of payment %s", payment.pk)
