"""The owner's usage and billing page: balance, daily usage chart, ledger, voucher redemption."""
from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from levee.accounts.models import User
from levee.accounts.operators import signed_in
from levee.billing import services
from levee.billing.charts import stacked_bars
from levee.billing.models import DailyUsage, LedgerEntry
from levee.billing.money import localized
from levee.billing.pricing import currency

PERIODS = (7, 30, 90)
PRICE_CLASSES = [("input_cache_hit", gettext_lazy("Input (cache hit)")),
                 ("input_cache_miss", gettext_lazy("Input (cache miss)")), ("output", gettext_lazy("Output"))]
# The page's words for billing's refusals (the API keeps billing's English messages).
REFUSALS = {
    "voucher_not_found": gettext_lazy("No such voucher code."),
    "email_not_verified": gettext_lazy("Verify your email address before redeeming vouchers."),
    "voucher_expired": gettext_lazy("This voucher has expired."),
    "voucher_already_redeemed": gettext_lazy("You have already redeemed this voucher."),
    "voucher_exhausted": gettext_lazy("This voucher has been fully redeemed."),
}


def price_table() -> dict:
    """The price book of the models served now (those the chat offers: levee.api.services.served_models)
    as the home and pricing pages' table: a row of per-million prices per model."""
    from levee.api.services import served_models
    from levee.billing.pricing import price_book

    served, _checked = served_models()
    book = price_book(models=served)
    rows = [(entry["model"], [entry["prices"].get(key, {}).get("per_million_tokens", "—") for key, _ in PRICE_CLASSES])
            for entry in book["models"]]
    return {"book": book, "rows": rows, "labels": [label for _, label in PRICE_CLASSES], "served": served}
LEDGER_PAGE_SIZE = 20


def in_words(book: dict) -> dict:
    """The price book as the pricing page shows it: token classes by their (translated) names and a
    window's days in the reader's language, "" for every day (the JSON keeps codes and English)."""
    from django.utils.dates import WEEKDAYS_ABBR
    from django.utils.translation import pgettext

    from levee.billing.models import TokenClass

    def named(row: dict) -> dict:
        return {**row, "token_class": TokenClass(row["token_class"]).label}

    def days(weekdays: list[int]) -> str:
        wanted = sorted(set(weekdays))
        if len(wanted) == 7:
            return ""
        names = [str(WEEKDAYS_ABBR[d - 1]) for d in wanted]
        if len(wanted) > 1 and wanted == list(range(wanted[0], wanted[-1] + 1)):
            return _("%(first)s–%(last)s") % {"first": names[0], "last": names[-1]}
        return pgettext("list separator", ", ").join(names)

    words = {**book, "discount_windows": [{**named(w), "days": days(w["weekdays"])} for w in book["discount_windows"]]}
    change = book.get("next_change")
    if change:
        words["next_change"] = {**change, "prices": [named(p) for p in change["prices"]],
                                "discount_windows_starting": [named(w) for w in change["discount_windows_starting"]],
                                "discount_windows_ending": [named(w) for w in change["discount_windows_ending"]]}
    return words


def _usage(user: User, days: int) -> dict[str, Any]:
    today = timezone.now().astimezone(timezone.get_fixed_timezone(0)).date()
    start = today - timedelta(days=days - 1)
    rows = list(DailyUsage.objects.filter(user=user, day__gte=start, day__lte=today)
                .values("day", "model", "source").order_by("day", "model", "source")
                .annotate(requests=Sum("requests"), hit=Sum("prompt_cache_hit_tokens"),
                          miss=Sum("prompt_cache_miss_tokens"), out=Sum("completion_tokens"), cost=Sum("cost_nano")))
    day_list = [start + timedelta(days=i) for i in range(days)]
    index = {day: i for i, day in enumerate(day_list)}
    tokens: dict[str, list[float]] = {}
    cost: dict[str, list[int]] = {}  # nano-units: the bars' titles show exact amounts
    table = []
    for row in rows:
        total = row["hit"] + row["miss"] + row["out"]
        tokens.setdefault(row["model"], [0] * days)[index[row["day"]]] += total
        cost.setdefault(row["model"], [0] * days)[index[row["day"]]] += row["cost"]
        table.append({**row, "tokens": total, "cost_display": localized(row["cost"], places=6),
                      "source_label": _("web chat (free)") if row["source"] == "web" else _("API")})
    cur = currency()
    return {
        "export_start": start.isoformat(), "export_end": today.isoformat(),
        "tokens_chart": stacked_bars(days=day_list, series=tokens, chart_id="tokens-chart",
                                     title=_("Tokens per day and model, last %(days)d days") % {"days": days},
                                     empty=_("No usage in this period.")),
        "cost_chart": stacked_bars(days=day_list, series={m: v for m, v in cost.items() if any(v)},
                                   chart_id="cost-chart", title=_("Cost per day and model in %(currency)s, last %(days)d days")
                                   % {"currency": cur, "days": days},
                                   empty=_("No charges in this period (free web chat costs nothing)."),
                                   fmt=_chart_amount),
        "usage_rows": list(reversed(table)),
        "total_tokens": sum(r["tokens"] for r in table),
        "total_cost": localized(sum(r["cost"] for r in table), places=6),
    }


def _chart_amount(nano: float) -> str:
    """A cost on the chart (nano-units; a grid line's value may be a fraction of one): four places
    at most, trailing zeros cut, as the reader's language writes numbers."""
    if not nano:
        return "0"
    text = localized(int(nano), places=4)
    decimal = formats.get_format("DECIMAL_SEPARATOR")
    return text.rstrip("0").removesuffix(decimal) if decimal in text else text


@login_required
def usage_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _redeem(request)
    try:
        days = int(request.GET.get("days", 30))
    except ValueError:
        days = 30
    if days not in PERIODS:
        days = 30
    from levee.chat.services import tokens_used_today

    user = signed_in(request)
    wallet = services.wallet_for(user)
    ledger = Paginator(LedgerEntry.objects.filter(wallet=wallet).order_by("-id"), LEDGER_PAGE_SIZE)
    page = ledger.get_page(request.GET.get("page"))
    entries = [{"entry": e, "amount": localized(e.balance_delta, places=6),
                "held": localized(e.held_delta, places=6) if e.held_delta else ""} for e in page]
    from levee.billing import alerts, payments

    return render(request, "billing/usage.html", {
        "alerts": alerts.view(user),
        "balance": services.balance_view(user), "currency": currency(), "topup": payments.options(),
        "held": localized(wallet.held_nano, places=2), "days": days, "periods": PERIODS,
        "page": page, "entries": entries,
        "chat_used": tokens_used_today(user),  # chat_quota: levee.chat.context
        **_usage(user, days),
    })


def _redeem(request: HttpRequest) -> HttpResponse:
    code = request.POST.get("code", "")
    try:
        redemption = services.redeem_voucher(signed_in(request), code)
    except services.BillingRefused as exc:
        messages.error(request, REFUSALS.get(exc.code, exc.message))
    else:
        amount = localized(redemption.entry.topped_up_delta, places=2)
        messages.success(request, _("Voucher redeemed: %(amount)s %(currency)s added to your balance.")
                         % {"amount": amount, "currency": currency()})
    return redirect("usage-page")


@login_required
@require_POST
def topup_start(request: HttpRequest) -> HttpResponse:
    """The usage page's top-up form: make a Stripe Checkout Session and send the browser to it."""
    from levee.billing import payments

    raw = (request.POST.get("custom_amount") or "").strip() or request.POST.get("amount") or ""
    try:
        amount = payments.parse_topup_amount(raw)
        result = reverse("topup-result", args=[payments.PLACEHOLDER])
        payment = payments.start_checkout(
            signed_in(request), amount,
            success_url=request.build_absolute_uri(result) + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=request.build_absolute_uri(result) + "?cancelled=1")
    except services.BillingRefused as exc:
        messages.error(request, exc.page_message())
        return redirect("usage-page")
    return HttpResponseRedirect(payment.checkout_url)


@login_required
def topup_result(request: HttpRequest, payment_id: uuid.UUID) -> HttpResponse:
    """Where Stripe sends the browser back: what became of the payment (credited by the webhook,
    still being confirmed, or cancelled)."""
    from levee.billing.models import Payment

    payment = get_object_or_404(Payment, pk=payment_id, user=signed_in(request))
    return render(request, "billing/topup_result.html", {
        "payment": payment, "amount": localized(payment.amount_nano, places=2),
        "cancelled": request.GET.get("cancelled") == "1" and payment.status != "credited",
        "balance": services.balance_view(signed_in(request))["balance_infos"][0]})


@login_required
@require_POST
def alerts_form(request: HttpRequest) -> HttpResponse:
    """The usage page's alert form (empty threshold = off)."""
    from levee.billing import alerts
    from levee.billing.money import InvalidAmount, parse_amount

    try:
        thresholds = {}
        for name, label in (("low_balance", _("Low-balance threshold")), ("daily_spend", _("Daily spend threshold"))):
            raw = request.POST.get(name, "").strip()
            try:
                thresholds[name] = parse_amount(raw) if raw else None
            except InvalidAmount:
                raise ValueError(_("%(label)s: enter a positive amount like 12.50 (at most nine decimal places), "
                                   "or leave the field empty.") % {"label": label}) from None
        alerts.configure(signed_in(request), low_balance_nano=thresholds["low_balance"],
                         daily_spend_nano=thresholds["daily_spend"], daily_digest=request.POST.get("daily_digest") == "on",
                         webhook_url=request.POST.get("webhook_url", ""), rotate_secret=request.POST.get("rotate") == "on",
                         actor=signed_in(request), source="owner")
    except ValueError as exc:
        messages.error(request, _(str(exc)))  # alerts' own refusals are marked for translation
    else:
        messages.success(request, _("Alerts saved."))
    return redirect(reverse("usage-page") + "#alerts-h")
