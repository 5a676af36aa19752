"""Billing verbs. Views, admin actions, tasks and commands call these; each is one short transaction.

Locking discipline (`SELECT … FOR NO KEY UPDATE`, one fixed order per kind of row): settling and
releasing a hold lock the hold first, then its wallet, then the wallet's grants by pk; every other
verb that changes a wallet (credit, top-up, voucher, grant expiry) locks the wallet first, then the
rows under it (grants by pk, the voucher) and never a hold. Placing a hold moves the wallet in one
conditional statement before the hold row exists. So writers of one wallet queue on its row and no
two transactions wait on each other in opposite orders. Balances move with F() expressions; the
database's CheckConstraints forbid a negative balance or holds the balance does not cover.

The contract the API calls (docs/billing.md): InsufficientBalance, estimate_max_cost, place_hold,
settle_hold, release_hold; the Celery tasks `levee.billing.settle` and `levee.billing.sweep_holds`.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum, Value
from django.utils import timezone
from django.utils.translation import gettext_noop

from levee.accounts.models import User
from levee.billing import caps
from levee.billing.caps import SpendCapReached
from levee.billing.models import (
    AuditEvent,
    DailyUsage,
    Grant,
    Hold,
    HoldStatus,
    LedgerEntry,
    LedgerKind,
    UsageRecord,
    UsageSource,
    Voucher,
    VoucherRedemption,
    Wallet,
)
from levee.billing.money import MAX_OPERATION_NANO, Amount, format_amount
from levee.billing.pricing import PriceNotFound, currency, rates_at, rates_from_hold

if TYPE_CHECKING:
    from levee.core.errors import ApiError
    from levee.keys.models import ApiKey

log = logging.getLogger(__name__)

# A hold's primary key: the UUID, or its text as a job message or settlement carries it.
HoldId = uuid.UUID | str

__all__ = [
    "InsufficientBalance", "PriceNotFound", "SpendCapReached", "BillingRefused", "SettlementRefused",
    "estimate_max_cost", "place_hold", "settle_hold", "settle_signed", "release_hold", "record_free_usage",
    "wallet_for", "grant", "topup", "adjust", "refund_usage",
    "redeem_voucher", "expire_grants", "sweep_holds", "reconcile",
]

# A request can't be bigger than this many tokens; it keeps every product far inside a BIGINT.
MAX_TOKENS_PER_REQUEST = 10**9


class InsufficientBalance(Exception):
    """The wallet's available balance (balance minus open holds) cannot cover the request's maximum
    cost. The API answers 402 with DeepSeek's body: `error_response(402, ...)` / `exc.api_error()`."""

    status = 402

    def __init__(self, *, needed_nano: int, available_nano: int):
        super().__init__("Insufficient Balance")
        self.needed_nano = needed_nano
        self.available_nano = available_nano

    def api_error(self) -> ApiError:
        from levee.core.errors import ApiError

        return ApiError(402, "Insufficient Balance")


class BillingRefused(Exception):
    """A refused operator or owner action; `code` is stable for clients, nothing was written.
    `message` is English (the API's); a message given with `params` is a template marked with
    gettext_noop, which pages show translated through page_message()."""

    def __init__(self, code: str, message: str, *, status: int = 422, params: dict[str, object] | None = None):
        self.template, self.params = message, params
        self.message = message % params if params is not None else message
        super().__init__(self.message)
        self.code = code
        self.status = status

    def page_message(self) -> str:
        """The message in the reader's language, its amounts written as the language writes numbers."""
        from django.utils.translation import gettext

        from levee.billing.money import Amount

        if self.params is None:
            return gettext(self.template)
        return gettext(self.template) % {name: value.localized() if isinstance(value, Amount) else value
                                         for name, value in self.params.items()}


class SettlementRefused(ValueError):
    """A settlement that is not signed with the worker secret or does not match its hold (another
    job, another account): nothing is charged."""


def _now() -> datetime:
    return timezone.now()


def _check_tokens(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_PER_REQUEST:
            raise ValueError(f"{name} must be an integer between 0 and {MAX_TOKENS_PER_REQUEST}, not {value!r}")


def _check_amount(amount: int, *, signed: bool = False) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError(f"amounts are integer nano-units, not {amount!r}")
    if amount == 0 or (amount < 0 and not signed) or abs(amount) > MAX_OPERATION_NANO:
        raise ValueError(f"amount {amount} is out of range")


def _lock_wallet(wallet_id: int) -> Wallet:
    return Wallet.objects.select_for_update(no_key=True).get(pk=wallet_id)


def _lock_hold(hold_id: HoldId, related: tuple[str, ...] = ()) -> Hold:
    """Lock one hold row (only it: not the price rows it is read with)."""
    return Hold.objects.select_related(*related).select_for_update(no_key=True, of=("self",)).get(pk=hold_id)


def _move(wallet: Wallet, *, granted: int = 0, topped_up: int = 0, held: int = 0, at: datetime) -> None:
    """Apply deltas to a locked wallet row with F() and mirror them on the Python object."""
    Wallet.objects.filter(pk=wallet.pk).update(granted_nano=F("granted_nano") + granted,
                                                topped_up_nano=F("topped_up_nano") + topped_up,
                                                held_nano=F("held_nano") + held, updated_at=at)
    wallet.granted_nano += granted
    wallet.topped_up_nano += topped_up
    wallet.held_nano += held


def wallet_for(user: User) -> Wallet:
    """The account's wallet, made on first use."""
    wallet, _ = Wallet.objects.get_or_create(user=user)
    return wallet


# --- holds ---------------------------------------------------------------------------------------

def estimate_max_cost(model: str, prompt_tokens: int, max_tokens: int, at: datetime | None = None) -> int:
    """The most a request can cost in nano-units at the prices in force at `at` (now): every prompt
    token at the dearer input rate plus max_tokens of output. Raises PriceNotFound for an unpriced model."""
    _check_tokens(prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    return rates_at(model, at).max_cost(prompt_tokens=prompt_tokens, max_tokens=max_tokens)


def place_hold(*, user: User, api_key: ApiKey | None = None, model: str, prompt_tokens: int, max_tokens: int,
               request_id: str, deadline: datetime, job_id: str = "") -> Hold:
    """Reserve the request's maximum cost against the available balance, atomically. The prices in
    force now are remembered on the hold and charged at settle. Raises InsufficientBalance.

    The wallet row is touched last, by one conditional UPDATE that both checks and reserves: the
    row lock (which a settlement of the same account also takes) is held only from that statement
    to the commit, so concurrent requests of one account queue for a moment, not a transaction."""
    _check_tokens(prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    now = _now()
    rates = rates_at(model, now)
    amount = rates.max_cost(prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    wallet_id = _wallet_id_of(user)
    hold = Hold(wallet_id=wallet_id, api_key=api_key, model=model, request_id=request_id[:64], job_id=job_id[:64],
                prompt_tokens=prompt_tokens, max_tokens=max_tokens, amount_nano=amount, deadline=deadline,
                created_at=now, price_cache_hit=rates.cache_hit.price, price_cache_miss=rates.cache_miss.price,
                price_output=rates.output.price, percent_off_cache_hit=rates.cache_hit.percent_off,
                percent_off_cache_miss=rates.cache_miss.percent_off, percent_off_output=rates.output.percent_off)
    entry = LedgerEntry(wallet_id=wallet_id, kind=LedgerKind.HOLD, held_delta=amount, hold=hold, actor=user,
                        created_at=now)
    if _reserve_within_caps(hold, entry, api_key, user_id=user.pk):
        return hold
    wallet = wallet_for(user)
    if wallet.pk != wallet_id:  # the remembered id was stale: once more with the real one
        _wallet_ids[user.pk] = wallet.pk
        return place_hold(user=user, api_key=api_key, model=model, prompt_tokens=prompt_tokens,
                          max_tokens=max_tokens, request_id=request_id, deadline=deadline, job_id=job_id)
    raise InsufficientBalance(needed_nano=amount, available_nano=wallet.available_nano)


def _reserve_within_caps(hold: Hold, entry: LedgerEntry, api_key: ApiKey | None, *, user_id: int) -> bool:
    """_reserve, and for a key with spend caps the caps' counters in the same transaction (taken
    before the wallet row). Raises SpendCapReached (nothing written) when a cap would be passed."""
    if api_key is None or not api_key.caps:
        return _reserve(hold, entry, user_id=user_id)
    with transaction.atomic():
        caps.reserve(api_key, hold.amount_nano, hold.created_at)
        if _reserve(hold, entry, user_id=user_id):
            return True
        transaction.set_rollback(True)
    return False


def _reserve(hold: Hold, entry: LedgerEntry, *, user_id: int) -> bool:
    """Write the hold and its ledger entry and reserve its amount on the wallet, all or nothing;
    False (and nothing written) when the wallet cannot cover it or is not the account's.

    The one way a hold is placed. Its three writes are sent as one statement where the database
    has data-modifying WITH (PostgreSQL: one round trip, the wallet row locked for that statement
    only; 1.3 ms against 2.0 ms for the same writes in a transaction, docs/benchmarks.md), and as
    a transaction that touches the wallet last where it has not (SQLite, `make run`)."""
    statements = _reserve_statement(hold, entry, user_id=user_id) if connection.vendor in _WRITABLE_WITH else None
    if statements is not None:
        with connection.cursor() as cursor:
            cursor.execute(*statements)
            row = cursor.fetchone()
        if row is None:
            return False
        for obj in (hold, entry):
            obj._state.adding, obj._state.db = False, connection.alias
        entry.pk = row[0]
        return True
    with transaction.atomic():
        hold.save(force_insert=True)
        entry.save(force_insert=True)
        covered = Wallet.objects.filter(
            pk=hold.wallet_id, user_id=user_id,
            granted_nano__gte=Value(hold.amount_nano) - F("topped_up_nano") + F("held_nano"),
        ).update(held_nano=F("held_nano") + hold.amount_nano, updated_at=hold.created_at)
        if not covered:
            transaction.set_rollback(True)
    return bool(covered)


# Database vendors whose statements may UPDATE and INSERT in WITH parts (the hold_path test fixture
# empties it to run the transaction on PostgreSQL too).
_WRITABLE_WITH = {"postgresql"}


def _insert_values(obj: Hold | LedgerEntry) -> tuple[list[str], list]:
    """Column names and database values of an unsaved row, as Model.save() would insert them
    (through the documented Field API: pre_save, get_db_prep_save)."""
    fields = [f for f in obj._meta.concrete_fields if not (f.primary_key and getattr(f, "db_returning", False))]
    return ([connection.ops.quote_name(f.column) for f in fields],
            [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields])


def _reserve_statement(hold: Hold, entry: LedgerEntry, *, user_id: int) -> tuple[str, list]:
    """The conditional reservation and both inserts as one statement: a statement's data-modifying
    WITH parts commit together or not at all, and the inserts take their rows from the UPDATE's,
    so an uncovered hold writes nothing."""
    hold_columns, hold_values = _insert_values(hold)
    entry_columns, entry_values = _insert_values(entry)
    wallet = Wallet._meta.db_table
    sql = (f"WITH reserved AS (UPDATE {wallet} SET held_nano = held_nano + %s, updated_at = %s "
           f"WHERE id = %s AND user_id = %s AND granted_nano + topped_up_nano - held_nano >= %s RETURNING id), "
           f"held AS (INSERT INTO {Hold._meta.db_table} ({', '.join(hold_columns)}) "
           f"SELECT {', '.join(['%s'] * len(hold_values))} FROM reserved RETURNING id) "
           f"INSERT INTO {LedgerEntry._meta.db_table} ({', '.join(entry_columns)}) "
           f"SELECT {', '.join(['%s'] * len(entry_values))} FROM held RETURNING id")
    amount = hold.amount_nano
    return sql, [amount, hold.created_at, hold.wallet_id, user_id, amount, *hold_values, *entry_values]


_wallet_ids: dict[int, int] = {}


def _wallet_id_of(user: User) -> int:
    """The account's wallet id, made on first use and remembered per process (place_hold checks it
    against the account in the same UPDATE that reserves, and looks again if it does not match)."""
    wallet_id = _wallet_ids.get(user.pk)
    if wallet_id is None:
        if len(_wallet_ids) > 100_000:
            _wallet_ids.clear()
        wallet_id = _wallet_ids[user.pk] = wallet_for(user).pk
    return wallet_id


def _spend(wallet: Wallet, amount: int) -> tuple[int, int]:
    """Split a charge into (from granted, from topped-up): grants first, soonest expiry first.
    Decrements the grants; the caller moves the wallet. The wallet row is already locked."""
    from_granted = min(amount, wallet.granted_nano)
    left = from_granted
    if left:
        grants = list(Grant.objects.select_for_update(no_key=True).filter(wallet=wallet, remaining_nano__gt=0)
                      .order_by("pk"))
        far = datetime.max.replace(tzinfo=UTC)
        for g in sorted(grants, key=lambda g: (g.expires_at or far, g.pk)):
            take = min(left, g.remaining_nano)
            Grant.objects.filter(pk=g.pk).update(remaining_nano=F("remaining_nano") - take)
            left -= take
            if not left:
                break
        if left:  # grants disagree with the wallet's granted column: refuse rather than guess
            raise RuntimeError(f"wallet {wallet.pk}: grants hold less than its granted balance")
    return from_granted, amount - from_granted


def _add_daily(usage: UsageRecord) -> None:
    key = {"user_id": usage.user_id, "day": usage.started_at.astimezone(UTC).date(), "model": usage.model,
           "source": usage.source}
    amounts = {"requests": 1, "prompt_cache_hit_tokens": usage.prompt_cache_hit_tokens,
               "prompt_cache_miss_tokens": usage.prompt_cache_miss_tokens,
               "completion_tokens": usage.completion_tokens, "cost_nano": usage.cost_nano}
    increments = {name: F(name) + value for name, value in amounts.items()}
    if DailyUsage.objects.filter(**key).update(**increments):
        return
    try:
        with transaction.atomic():
            DailyUsage.objects.create(**key, **amounts)
    except IntegrityError:  # another request of the same account, day and model made the row first
        DailyUsage.objects.filter(**key).update(**increments)


def _check_span(started_at: datetime, finished_at: datetime) -> None:
    for name, value in (("started_at", started_at), ("finished_at", finished_at)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"{name} must be an aware datetime, not {value!r}")
    if finished_at < started_at:
        raise ValueError("finished_at is before started_at")


def settle_hold(hold_id: HoldId, *, prompt_cache_hit_tokens: int, prompt_cache_miss_tokens: int,
                completion_tokens: int, started_at: datetime, finished_at: datetime) -> UsageRecord:
    """Charge a request's exact cost (at the prices remembered on the hold, capped at the held
    amount) and release the rest. The token counts are first held to the hold's bounds (no more
    prompt tokens than were counted when it was placed, no more output than its max_tokens): the
    usage record stores those clamped numbers. Idempotent: a second call returns the same record and charges
    nothing. A hold the sweep already released is still charged, from what is available then."""
    _check_tokens(prompt_cache_hit_tokens=prompt_cache_hit_tokens, prompt_cache_miss_tokens=prompt_cache_miss_tokens,
                  completion_tokens=completion_tokens)
    _check_span(started_at, finished_at)
    usage = {"prompt_cache_hit_tokens": prompt_cache_hit_tokens, "prompt_cache_miss_tokens": prompt_cache_miss_tokens,
             "completion_tokens": completion_tokens, "started_at": started_at, "finished_at": finished_at}
    record = _settle(hold_id, usage, optimistic=True)
    if record is None:  # a grant landed meanwhile and everything was rolled back: again, the wallet locked first
        record = _settle(hold_id, usage, optimistic=False)
    assert record is not None  # the attempt with the wallet locked first always settles
    return record


def _settle(hold_id: HoldId, tokens: dict[str, Any], *, optimistic: bool) -> UsageRecord | None:
    """One attempt. None when the optimistic compare-and-set found a grant that reached the wallet
    after the hold was read: the attempt is rolled back (nothing of it stays) for the caller to redo."""
    wallet_id, status = Hold.objects.values_list("wallet_id", "status").get(pk=hold_id)
    if status == HoldStatus.SETTLED:  # a duplicate message: answer without taking a lock
        return UsageRecord.objects.get(hold_id=hold_id)
    now = _now()
    # Locks in the order every hold-closing path takes them: the hold, then (as late as possible,
    # since each new request of the account waits for it in place_hold) the wallet.
    with transaction.atomic():
        hold = _lock_hold(hold_id, related=("price_cache_hit", "price_cache_miss", "price_output", "wallet",
                                            "api_key"))
        if hold.status == HoldStatus.SETTLED:
            return UsageRecord.objects.get(hold=hold)
        late = hold.status == HoldStatus.RELEASED
        capped = caps.is_capped(hold)
        if capped:  # the key's spend counters, before the wallet (the order place_hold takes them in)
            caps.lock(hold)
        wallet = _lock_wallet(wallet_id) if late else None  # a late charge depends on the balance
        tokens = _clamped(tokens, hold)
        cost = rates_from_hold(hold).cost(cache_hit_tokens=tokens["prompt_cache_hit_tokens"],
                                          cache_miss_tokens=tokens["prompt_cache_miss_tokens"],
                                          completion_tokens=tokens["completion_tokens"])
        charge = min(cost, hold.amount_nano)
        if wallet is not None:  # late
            charge = min(charge, wallet.available_nano)
        if cost > charge:
            log.warning("hold %s: cost %s nano exceeds what can be charged (%s nano)", hold.pk, cost, charge)
        Hold.objects.filter(pk=hold.pk).update(status=HoldStatus.SETTLED, closed_at=now,
                                               close_reason="settled" + (" late" if late else ""))
        usage = UsageRecord.objects.create(
            user_id=hold.wallet.user_id, api_key_id=hold.api_key_id, hold=hold, model=hold.model,
            request_id=hold.request_id, source=UsageSource.API, **tokens,
            price_cache_hit=hold.price_cache_hit, price_cache_miss=hold.price_cache_miss,
            price_output=hold.price_output, percent_off_cache_hit=hold.percent_off_cache_hit,
            percent_off_cache_miss=hold.percent_off_cache_miss, percent_off_output=hold.percent_off_output,
            cost_nano=charge, currency=hold.price_output.currency, created_at=now)
        _add_daily(usage)
        held_back = 0 if late else hold.amount_nano
        if capped:
            caps.adjust(hold, charge - held_back)
        if wallet is None and optimistic and hold.wallet.granted_nano == 0:
            # Nothing granted to split (the usual paying account, as read with the hold): the
            # entries first, then the balance moves by one compare-and-set as the last statement,
            # so the wallet row is locked only from it to the commit.
            _charge_entries(wallet_id, hold, charge, 0, charge, held_back, late, now)
            if not Wallet.objects.filter(pk=wallet_id, granted_nano=0).update(
                    topped_up_nano=F("topped_up_nano") - charge, held_nano=F("held_nano") - held_back,
                    updated_at=now):
                transaction.set_rollback(True)
                return None
            return usage
        if wallet is None:
            wallet = _lock_wallet(wallet_id)
        from_granted, from_topped_up = _spend(wallet, charge)
        _move(wallet, granted=-from_granted, topped_up=-from_topped_up, held=-held_back, at=now)
        _charge_entries(wallet_id, hold, charge, from_granted, from_topped_up, held_back, late, now)
    return usage


def _clamped(tokens: dict[str, Any], hold: Hold) -> dict[str, Any]:
    """The usage held to the hold's bounds (a worker cannot report more than it was given or allowed)."""
    hit = min(tokens["prompt_cache_hit_tokens"], hold.prompt_tokens)
    miss = min(tokens["prompt_cache_miss_tokens"], hold.prompt_tokens - hit)
    out = min(tokens["completion_tokens"], hold.max_tokens)
    if (hit, miss, out) != (tokens["prompt_cache_hit_tokens"], tokens["prompt_cache_miss_tokens"],
                            tokens["completion_tokens"]):
        log.warning("hold %s: reported usage %s clamped to %s prompt and %s completion tokens", hold.pk,
                    {k: tokens[k] for k in ("prompt_cache_hit_tokens", "prompt_cache_miss_tokens",
                                            "completion_tokens")}, hold.prompt_tokens, hold.max_tokens)
    return {**tokens, "prompt_cache_hit_tokens": hit, "prompt_cache_miss_tokens": miss, "completion_tokens": out}


def settle_signed(data: dict[str, Any], *, completion_at_most: int | None = None) -> UsageRecord:
    """Settle from a signed settlement (an inference worker's, in its job's last event, or the web's
    own for what it delivered): refuses (SettlementRefused, nothing charged) one the worker secret
    did not sign, or whose hold, job or account do not match. Then settle_hold (clamped, idempotent).
    `completion_at_most`: charge no more completion tokens than this (what the client was sent)."""
    from inference.protocol import settlement_signed

    if not settlement_signed(settings.LEVEE_WORKER_SECRET, data):
        raise SettlementRefused("the settlement is not signed with the worker secret")
    hold = Hold.objects.select_related("wallet").filter(pk=data["hold_id"]).first()
    if hold is None:
        raise SettlementRefused(f"no hold {data['hold_id']!r}")
    if not hold.job_id or hold.job_id != data["job_id"] or str(hold.wallet.user_id) != data["account"]:
        raise SettlementRefused(f"the settlement names job {data['job_id']!r} of account {data['account']!r}; "
                                f"hold {hold.pk} is job {hold.job_id!r} of account {hold.wallet.user_id}")
    moments = {}
    for name in ("started_at", "finished_at"):
        value = data[name]
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        if moment is None or moment.tzinfo is None:
            raise SettlementRefused(f"{name} must be an ISO-8601 instant with a UTC offset, not {value!r}")
        moments[name] = moment
    completion = data["completion_tokens"]
    if completion_at_most is not None and isinstance(completion, int):
        completion = min(completion, max(0, completion_at_most))
    return settle_hold(hold.pk, prompt_cache_hit_tokens=data["prompt_cache_hit_tokens"],
                       prompt_cache_miss_tokens=data["prompt_cache_miss_tokens"],
                       completion_tokens=completion, **moments)


def _charge_entries(wallet_id: int, hold: Hold, charge: int, from_granted: int, from_topped_up: int, held_back: int,
                    late: bool, now: datetime) -> None:
    actor_id = hold.wallet.user_id
    LedgerEntry.objects.create(wallet_id=wallet_id, kind=LedgerKind.CHARGE, granted_delta=-from_granted,
                               topped_up_delta=-from_topped_up, held_delta=0 if late else -charge,
                               hold=hold, actor_id=actor_id, created_at=now)
    if held_back - charge > 0:
        LedgerEntry.objects.create(wallet_id=wallet_id, kind=LedgerKind.RELEASE, held_delta=-(held_back - charge),
                                   hold=hold, actor_id=actor_id, reason="unused part of the hold", created_at=now)


def release_hold(hold_id: HoldId, *, reason: str) -> bool:
    """Give an open hold's whole amount back to the available balance. True if this call released
    it; False if it was already settled or released (or does not exist)."""
    wallet_id = Hold.objects.filter(pk=hold_id).values_list("wallet_id", flat=True).first()
    if wallet_id is None:
        return False
    now = _now()
    with transaction.atomic():
        hold = _lock_hold(hold_id, related=("api_key",))  # the hold, then the wallet: settle_hold's order
        if hold.status != HoldStatus.OPEN:
            return False
        if caps.is_capped(hold):
            caps.adjust(hold, -hold.amount_nano)
        wallet = _lock_wallet(wallet_id)
        Hold.objects.filter(pk=hold_id).update(status=HoldStatus.RELEASED, closed_at=now, close_reason=reason[:200])
        amount = hold.amount_nano
        _move(wallet, held=-amount, at=now)
        LedgerEntry.objects.create(wallet=wallet, kind=LedgerKind.RELEASE, held_delta=-amount, hold_id=hold_id,
                                   reason=reason[:200], created_at=now)
    return True


def sweep_holds(*, now: datetime | None = None, grace: timedelta | None = None, limit: int = 1000,
                settlement_of: Callable[[str], dict[str, Any] | None] | None = None,
                sent_of: Callable[[str], int | None] | None = None) -> int:
    """Close open holds whose deadline passed more than `grace` ago. `settlement_of(job_id)` gives
    the signed settlement the job's last event carries, if any (the job finished but no web process
    settled it: the one following it died): such a hold is settled from it, for no more completion
    tokens than `sent_of(job_id)` says the web had passed on to the client (None: unknown), and is
    released when that is none. The others are released (their job is dead or lost). Returns how
    many this call closed."""
    now = now or _now()
    grace = grace if grace is not None else timedelta(seconds=settings.LEVEE_HOLD_SWEEP_GRACE_SECONDS)
    stale = list(Hold.objects.filter(status=HoldStatus.OPEN, deadline__lt=now - grace)
                 .order_by("deadline").values_list("pk", "job_id")[:limit])
    closed = 0
    for pk, job_id in stale:
        data = settlement_of(job_id) if settlement_of is not None and job_id else None
        sent = sent_of(job_id) if sent_of is not None and job_id and data is not None else None
        if data is not None and sent == 0:
            closed += release_hold(pk, reason="its web process died before the client was sent anything")
            continue
        if data is not None:
            try:
                settle_signed(data, completion_at_most=sent)
                closed += 1
                continue
            except SettlementRefused as exc:
                log.error("hold %s: the settlement in job %s's stream was refused: %s", pk, job_id, exc)
        closed += release_hold(pk, reason="deadline passed")
    return closed


def record_free_usage(*, user: User, model: str, request_id: str, prompt_cache_hit_tokens: int,
                      prompt_cache_miss_tokens: int, completion_tokens: int, started_at: datetime,
                      finished_at: datetime, source: str = UsageSource.WEB, api_key: ApiKey | None = None) -> UsageRecord:
    """Record usage that costs nothing (free web chat): the same record and daily totals, no hold,
    no price, no ledger entry."""
    _check_tokens(prompt_cache_hit_tokens=prompt_cache_hit_tokens, prompt_cache_miss_tokens=prompt_cache_miss_tokens,
                  completion_tokens=completion_tokens)
    _check_span(started_at, finished_at)
    if source not in UsageSource.values:
        raise ValueError(f"source must be one of {UsageSource.values}")
    with transaction.atomic():
        usage = UsageRecord.objects.create(
            user=user, api_key=api_key, model=model, request_id=request_id[:64], source=source,
            prompt_cache_hit_tokens=prompt_cache_hit_tokens, prompt_cache_miss_tokens=prompt_cache_miss_tokens,
            completion_tokens=completion_tokens, cost_nano=0, currency=currency(), started_at=started_at,
            finished_at=finished_at)
        _add_daily(usage)
    return usage


# --- credit in and out -----------------------------------------------------------------------------

def grant(user: User, amount_nano: int, *, reason: str, expires_at: datetime | None, key: str | None = None,
          actor: User | None = None) -> Grant:
    """Add granted credit. With a `key`, at most one grant per wallet and key (a repeat returns it)."""
    _check_amount(amount_nano)
    wallet = wallet_for(user)
    now = _now()
    with transaction.atomic():
        wallet = _lock_wallet(wallet.pk)
        if key is not None:
            existing = Grant.objects.filter(wallet=wallet, key=key).first()
            if existing is not None:
                return existing
        g = Grant.objects.create(wallet=wallet, amount_nano=amount_nano, remaining_nano=amount_nano,
                                 expires_at=expires_at, reason=reason[:200], key=key, created_by=actor, created_at=now)
        _move(wallet, granted=amount_nano, at=now)
        LedgerEntry.objects.create(wallet=wallet, kind=LedgerKind.GRANT, granted_delta=amount_nano, grant=g,
                                   actor=actor, reason=reason[:200], created_at=now)
    return g


def topup(wallet: Wallet, amount: int, *, source: str, external_id: str, actor: User | None = None,
          reason: str = "") -> LedgerEntry:
    """The payment-provider seam: credit money paid through `source` (e.g. "stripe") whose payment
    is `external_id` there. Idempotent: a repeated (source, external_id) returns the first entry and
    credits nothing, so a webhook may be delivered any number of times."""
    _check_amount(amount)
    if not source or not external_id or ":" in source:
        raise ValueError("a top-up needs a source (without ':') and the provider's payment id")
    ref = f"{source}:{external_id}"[:200]
    now = _now()
    try:
        with transaction.atomic():
            wallet = _lock_wallet(wallet.pk)
            existing = LedgerEntry.objects.filter(external_id=ref).first()
            if existing is not None:
                return existing
            _move(wallet, topped_up=amount, at=now)
            return LedgerEntry.objects.create(wallet=wallet, kind=LedgerKind.TOPUP, topped_up_delta=amount,
                                              actor=actor, reason=(reason or f"top-up via {source}")[:200],
                                              external_id=ref, created_at=now)
    except IntegrityError:  # the same payment credited concurrently to another wallet row
        return LedgerEntry.objects.get(external_id=ref)


def adjust(wallet: Wallet, amount: int, *, actor: User | None, reason: str, source: str) -> LedgerEntry:
    """An operator's credit (a manual top-up, e.g. a bank transfer) or debit of the topped-up
    balance, with a required reason; written to the ledger and the audit log. A debit may not take
    money that open holds reserve or that was granted."""
    _check_amount(amount, signed=True)
    reason = (reason or "").strip()
    if not reason:
        raise BillingRefused("reason_required", gettext_noop("A reason is required."), status=400)
    now = _now()
    with transaction.atomic():
        wallet = _lock_wallet(wallet.pk)
        if amount < 0 and -amount > min(wallet.topped_up_nano, wallet.available_nano):
            raise BillingRefused("insufficient_balance", gettext_noop(
                "Cannot debit %(amount)s: only %(free)s of topped-up balance is free of holds."),
                params={"amount": Amount(-amount, 9), "free": Amount(min(wallet.topped_up_nano, wallet.available_nano), 9)})
        _move(wallet, topped_up=amount, at=now)
        entry = LedgerEntry.objects.create(wallet=wallet, kind=LedgerKind.TOPUP if amount > 0 else LedgerKind.ADJUSTMENT,
                                           topped_up_delta=amount, actor=actor, reason=reason[:200], created_at=now)
        AuditEvent.objects.create(actor=actor, action="credit" if amount > 0 else "debit", source=source,
                                  wallet=wallet, amount_nano=amount, reason=reason[:200], entry=entry, created_at=now)
    return entry


def refund_usage(usage: UsageRecord, *, actor: User | None, reason: str) -> LedgerEntry:
    """Give a request's charge back, to the topped-up balance (a grant may have expired since).
    Once per usage record."""
    if usage.cost_nano <= 0:
        raise BillingRefused("nothing_to_refund", gettext_noop("This request cost nothing."))
    ref = f"refund:{usage.pk}"
    wallet = wallet_for(usage.user)
    now = _now()
    with transaction.atomic():
        wallet = _lock_wallet(wallet.pk)
        if LedgerEntry.objects.filter(external_id=ref).exists():
            raise BillingRefused("already_refunded", gettext_noop("This request was already refunded."), status=409)
        _move(wallet, topped_up=usage.cost_nano, at=now)
        entry = LedgerEntry.objects.create(wallet=wallet, kind=LedgerKind.REFUND, topped_up_delta=usage.cost_nano,
                                           actor=actor, reason=reason[:200], external_id=ref, created_at=now)
        AuditEvent.objects.create(actor=actor, action="refund", source="admin", wallet=wallet,
                                  amount_nano=usage.cost_nano, reason=reason[:200], entry=entry, created_at=now)
    return entry


def expire_grants(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Take what is left of expired grants out of the wallets, through `expiry` ledger entries.
    A charge spends granted money first, so open holds will draw their amounts from the granted
    balance: expiry takes at most granted − held and leaves the rest until they close (the next
    run takes it); it never takes money a paid top-up would then have to cover.
    Returns how many grants were touched."""
    now = now or _now()
    due = list(Grant.objects.filter(expires_at__lte=now, remaining_nano__gt=0).order_by("expires_at")
               .values_list("pk", "wallet_id")[:limit])
    touched = 0
    for grant_id, wallet_id in due:
        with transaction.atomic():
            wallet = _lock_wallet(wallet_id)
            g = Grant.objects.select_for_update(no_key=True).get(pk=grant_id)
            assert g.expires_at is not None  # due: it was selected by expires_at__lte
            amount = min(g.remaining_nano, max(0, wallet.granted_nano - wallet.held_nano))
            if amount <= 0:
                continue
            Grant.objects.filter(pk=g.pk).update(remaining_nano=F("remaining_nano") - amount)
            _move(wallet, granted=-amount, at=now)
            LedgerEntry.objects.create(wallet=wallet, kind=LedgerKind.EXPIRY, granted_delta=-amount, grant=g,
                                       reason=f"grant expired at {g.expires_at.isoformat()}", created_at=now)
            touched += 1
    return touched


# --- vouchers ---------------------------------------------------------------------------------------

def normalize_code(code: object) -> str | None:
    if not isinstance(code, str):
        return None
    code = code.strip().upper()
    if not 1 <= len(code) <= 64 or not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in code):
        return None
    return code


def save_voucher(voucher: Voucher, *, by: User | None, source: str = "admin") -> Voucher:
    """Creates or changes a voucher (unredeemed ones only: the admin offers no other), audited."""
    created = voucher.pk is None
    with transaction.atomic():
        if created:
            voucher.created_by = by
        voucher.save()
        AuditEvent.objects.create(actor=by, action="voucher " + ("created" if created else "changed"),
                                  source=source, amount_nano=voucher.amount_nano, reason=f"voucher {voucher.code}")
    return voucher


def delete_voucher(voucher: Voucher, *, by: User | None, source: str = "admin") -> bool:
    """Deletes a voucher nobody has redeemed (compare-and-set on the count), audited; False if it
    was redeemed meanwhile, and then nothing changes."""
    with transaction.atomic():
        deleted, _ = Voucher.objects.filter(pk=voucher.pk, redeemed_count=0).delete()
        if deleted:
            AuditEvent.objects.create(actor=by, action="voucher deleted", source=source,
                                      amount_nano=voucher.amount_nano, reason=f"voucher {voucher.code}")
    return bool(deleted)


def redeem_voucher(user: User, code: object) -> VoucherRedemption:
    """Credit a voucher's amount to the account's topped-up balance. Once per account, never more
    than the voucher's redemptions, safe under any concurrency. Raises BillingRefused."""
    normalized = normalize_code(code)
    voucher = Voucher.objects.filter(code=normalized).first() if normalized else None
    if voucher is None:
        raise BillingRefused("voucher_not_found", gettext_noop("No such voucher code."), status=404)
    if not user.is_verified:
        raise BillingRefused("email_not_verified", gettext_noop("Verify your email address before redeeming vouchers."), status=403)
    now = _now()
    if voucher.expires_at <= now:
        raise BillingRefused("voucher_expired", gettext_noop("This voucher has expired."))
    wallet = wallet_for(user)
    try:
        with transaction.atomic():
            wallet = _lock_wallet(wallet.pk)
            if VoucherRedemption.objects.filter(voucher=voucher, wallet=wallet).exists():
                raise BillingRefused("voucher_already_redeemed", gettext_noop("You have already redeemed this voucher."), status=409)
            # Compare-and-set on the count: the database admits exactly max_redemptions of these.
            if not Voucher.objects.filter(pk=voucher.pk, redeemed_count__lt=F("max_redemptions"),
                                          expires_at__gt=now).update(redeemed_count=F("redeemed_count") + 1):
                raise BillingRefused("voucher_exhausted", gettext_noop("This voucher has been fully redeemed."))
            _move(wallet, topped_up=voucher.amount_nano, at=now)
            entry = LedgerEntry.objects.create(wallet=wallet, kind=LedgerKind.VOUCHER,
                                               topped_up_delta=voucher.amount_nano, actor=user,
                                               reason=f"voucher {voucher.code}", created_at=now)
            return VoucherRedemption.objects.create(voucher=voucher, wallet=wallet, entry=entry, created_at=now)
    except IntegrityError:  # the per-account unique constraint caught a concurrent double redemption
        raise BillingRefused("voucher_already_redeemed", gettext_noop("You have already redeemed this voucher."), status=409) from None


# --- reconciliation -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Discrepancy:
    wallet_id: int
    column: str
    wallet_value: int
    expected: int

    def __str__(self) -> str:
        return (f"wallet {self.wallet_id}: {self.column} is {self.wallet_value} nano but its ledger says "
                f"{self.expected} nano")


def reconcile() -> list[Discrepancy]:
    """Prove every wallet agrees with its ledger: each balance column equals the sum of its deltas,
    held equals the open holds, and granted equals what its grants have left. Reads only."""
    sums = {row["wallet"]: row for row in LedgerEntry.objects.values("wallet").annotate(
        granted=Sum("granted_delta"), topped_up=Sum("topped_up_delta"), held=Sum("held_delta")).order_by()}
    open_holds = dict(Hold.objects.filter(status=HoldStatus.OPEN).values("wallet").annotate(total=Sum("amount_nano"))
                      .order_by().values_list("wallet", "total"))
    grants_left = dict(Grant.objects.values("wallet").annotate(total=Sum("remaining_nano")).order_by()
                       .values_list("wallet", "total"))
    found = []
    for wallet in Wallet.objects.order_by("pk").iterator(chunk_size=2000):
        row = sums.get(wallet.pk, {})
        checks = [("granted_nano", wallet.granted_nano, row.get("granted") or 0),
                  ("topped_up_nano", wallet.topped_up_nano, row.get("topped_up") or 0),
                  ("held_nano", wallet.held_nano, row.get("held") or 0),
                  ("held_nano (open holds)", wallet.held_nano, open_holds.get(wallet.pk) or 0),
                  ("granted_nano (grants left)", wallet.granted_nano, grants_left.get(wallet.pk) or 0)]
        found += [Discrepancy(wallet.pk, column, have, want) for column, have, want in checks if have != want]
    return found


def balance_view(user: User) -> dict[str, Any]:
    """The account's balance: DeepSeek's body for GET /user/balance (`is_available`, `balance_infos`,
    amounts as two-decimal strings, truncated) plus the exact figures in nano-units (`total_nano`,
    `granted_nano`, `topped_up_nano`, `held_nano`, `available_nano`) for callers in code; the
    endpoint sends only DeepSeek's keys."""
    wallet = Wallet.objects.filter(user=user).first() or Wallet(user=user)
    cents = 10**7  # nano per hundredth
    granted, topped_up = wallet.granted_nano, wallet.topped_up_nano
    return {"is_available": bool(user.is_active and wallet.available_nano > 0),
            "balance_infos": [{"currency": currency(),
                               # the total shown is the sum of the two amounts shown, as DeepSeek's is
                               "total_balance": format_amount(granted - granted % cents + topped_up - topped_up % cents,
                                                              places=2),
                               "granted_balance": format_amount(granted, places=2),
                               "topped_up_balance": format_amount(topped_up, places=2)}],
            "total_nano": wallet.balance_nano, "granted_nano": granted, "topped_up_nano": topped_up,
            "held_nano": wallet.held_nano, "available_nano": wallet.available_nano}
