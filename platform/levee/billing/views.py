"""Billing endpoints: the key-authenticated balance (DeepSeek's shape), the owner's usage and
voucher redemption (session), and the public price book (HTML and JSON)."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import date
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from rest_framework.decorators import api_view, authentication_classes, permission_classes, renderer_classes
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from levee.accounts.operators import signed_in
from levee.billing import exports, services
from levee.billing.models import DailyUsage
from levee.billing.money import format_amount
from levee.billing.pricing import currency
from levee.core.errors import ApiError, error_response
from levee.core.middleware import sessionless
from levee.keys.authentication import ApiKeyAuthentication

log = logging.getLogger(__name__)


@sessionless
@api_view(["GET"])
@authentication_classes([ApiKeyAuthentication])
def user_balance(request: Request) -> Response:
    """GET /user/balance: the key owner's balance as DeepSeek reports it."""
    body = services.balance_view(signed_in(request))
    return Response({"is_available": body["is_available"], "balance_infos": body["balance_infos"]})


def _date_param(request: Request, name: str) -> date:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        raise ApiError(400, f"{name} is required (YYYY-MM-DD)", param=name, code="missing_parameter")
    try:
        if len(raw) != 10:
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a date written YYYY-MM-DD", param=name, code="invalid_date") from None


def _date_range(request: Request) -> tuple[date, date]:
    """?start=&end= (UTC days, both inclusive, at most LEVEE_USAGE_MAX_DAYS), or a 400 naming the parameter."""
    start, end = _date_param(request, "start"), _date_param(request, "end")
    if end < start:
        raise ApiError(400, "end is before start", param="end", code="invalid_range")
    if (end - start).days + 1 > settings.LEVEE_USAGE_MAX_DAYS:
        raise ApiError(400, f"the range is longer than {settings.LEVEE_USAGE_MAX_DAYS} days", param="end",
                       code="range_too_long")
    return start, end


class _CsvRenderer(BaseRenderer):
    """Lets a client that asks for text/csv reach the export views (their CSV is a streamed
    response; only an error body is rendered here, as JSON text)."""

    media_type, format, charset = "text/csv", "csv", "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: Mapping[str, Any] | None = None) -> bytes:
        return json.dumps(data).encode()


@api_view(["GET"])
@renderer_classes([JSONRenderer, _CsvRenderer])
def usage_export(request: Request) -> HttpResponseBase:
    """GET /api/usage/export?start=&end=&by=day|request: the owner's usage as CSV, per UTC day ×
    model × key (by=day, the default) or per request, streamed."""
    start, end = _date_range(request)
    by = request.query_params.get("by", "day")
    if by == "day":
        return exports.stream_csv(f"usage-{start}-{end}.csv", exports.DAILY_COLUMNS,
                                  exports.daily_rows(signed_in(request), start, end))
    if by != "request":
        raise ApiError(400, "by must be day or request", param="by", code="invalid_parameter")
    try:
        rows = exports.request_rows(signed_in(request), start, end)
    except exports.ExportTooLarge as exc:
        raise ApiError(400, str(exc), param="end", code="export_too_large") from None
    return exports.stream_csv(f"requests-{start}-{end}.csv", exports.REQUEST_COLUMNS, rows)


@api_view(["GET"])
@renderer_classes([JSONRenderer, _CsvRenderer])
def ledger_export(request: Request) -> HttpResponseBase:
    """GET /api/ledger/export?start=&end=: the owner's ledger entries as CSV, oldest first, streamed."""
    start, end = _date_range(request)
    try:
        rows = exports.ledger_rows(services.wallet_for(signed_in(request)), start, end)
    except exports.ExportTooLarge as exc:
        raise ApiError(400, str(exc), param="end", code="export_too_large") from None
    return exports.stream_csv(f"ledger-{start}-{end}.csv", exports.LEDGER_COLUMNS, rows)


@api_view(["GET"])
def usage(request: Request) -> Response:
    """GET /api/usage?start=YYYY-MM-DD&end=YYYY-MM-DD: the owner's tokens and cost per UTC day and
    model, both ends inclusive, at most LEVEE_USAGE_MAX_DAYS days."""
    start, end = _date_range(request)
    rows = (DailyUsage.objects.filter(user=signed_in(request), day__gte=start, day__lte=end)
            .values("day", "model").order_by("day", "model")
            .annotate(requests=Sum("requests"), prompt_cache_hit_tokens=Sum("prompt_cache_hit_tokens"),
                      prompt_cache_miss_tokens=Sum("prompt_cache_miss_tokens"),
                      completion_tokens=Sum("completion_tokens"), cost_nano=Sum("cost_nano")))
    data = [{"date": row["day"].isoformat(), "model": row["model"], "requests": row["requests"],
             "prompt_cache_hit_tokens": row["prompt_cache_hit_tokens"],
             "prompt_cache_miss_tokens": row["prompt_cache_miss_tokens"],
             "completion_tokens": row["completion_tokens"],
             "total_tokens": row["prompt_cache_hit_tokens"] + row["prompt_cache_miss_tokens"] + row["completion_tokens"],
             "cost": format_amount(row["cost_nano"]), "cost_nano": row["cost_nano"]} for row in rows]
    return Response({"object": "list", "currency": currency(), "start": start.isoformat(), "end": end.isoformat(),
                     "data": data})


@api_view(["POST"])
def redeem_voucher(request: Request) -> Response:
    """POST /api/vouchers/redeem {"code": "..."}: credit a voucher to the owner's balance."""
    body = request.data if isinstance(request.data, dict) else {}
    code = body.get("code")
    if not isinstance(code, str) or not code.strip():
        raise ApiError(400, "code is required", param="code", code="missing_parameter")
    try:
        redemption = services.redeem_voucher(signed_in(request), code)
    except services.BillingRefused as exc:
        raise ApiError(exc.status, exc.message, param="code", code=exc.code) from None
    amount = redemption.entry.topped_up_delta
    return Response({"object": "voucher_redemption", "code": redemption.voucher.code, "currency": currency(),
                     "amount": format_amount(amount, places=2), "amount_nano": amount,
                     "balance": services.balance_view(signed_in(request))["balance_infos"][0]}, status=201)


@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
def pricing_json(request: Request) -> Response:
    """GET /api/pricing: the prices and discount windows in force and the next scheduled change, of
    the models served now."""
    from levee.billing.pages import price_table

    return Response(price_table()["book"])


def pricing_page(request: HttpRequest) -> HttpResponse:
    from levee.billing.pages import in_words, price_table

    table = price_table()
    return render(request, "billing/pricing.html", {**table, "book": in_words(table["book"])})


@csrf_exempt
@sessionless
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """POST /billing/stripe/webhook: Stripe's events, verified by their signature (see
    levee.billing.payments). 400 for a delivery that is not Stripe's; 200 with what happened."""
    from levee.billing import payments

    try:
        outcome = payments.handle_webhook(request.body, request.headers.get("Stripe-Signature"))
    except payments.WebhookRefused as exc:
        log.warning("stripe webhook refused: %s", exc)
        return error_response(400, f"Webhook refused: {exc}", code="invalid_signature")
    return JsonResponse({"received": True, "outcome": outcome})


@api_view(["POST"])
def topups(request: Request) -> Response:
    """POST /api/topups {"amount": "20.00", "success_url"?, "cancel_url"?}: start a Stripe Checkout
    top-up; 201 with the payment id and the checkout URL to send the owner to."""
    from levee.billing import payments

    body = request.data if isinstance(request.data, dict) else {}
    try:
        amount = payments.parse_topup_amount(body.get("amount"))
        result = request.build_absolute_uri(reverse("topup-result", args=[payments.PLACEHOLDER]))
        payment = payments.start_checkout(
            signed_in(request), amount, success_url=result + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=result + "?cancelled=1")
    except services.BillingRefused as exc:
        raise ApiError(exc.status, exc.message, code=exc.code,
                       param="amount" if "amount" in exc.code else None) from None
    return Response({"object": "topup", "id": str(payment.id), "status": payment.status, "currency": payment.currency,
                     "amount": format_amount(payment.amount_nano, places=2), "checkout_url": payment.checkout_url},
                    status=201)


def _threshold(body: dict[str, Any], name: str) -> int | None:
    from levee.billing.money import InvalidAmount, parse_amount

    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ApiError(400, f"{name} must be a decimal amount like \"5.00\", or null", param=name, code="invalid_amount")
    try:
        return parse_amount(str(value))
    except InvalidAmount as exc:
        raise ApiError(400, f"{name}: {exc}", param=name, code="invalid_amount") from None


@api_view(["GET", "PUT"])
def alert_settings(request: Request) -> Response:
    """GET /api/alerts: the owner's alerts. PUT {"low_balance", "daily_spend", "daily_digest",
    "webhook_url", "rotate_secret"?}: set them (names left out are switched off)."""
    from levee.billing import alerts

    if request.method == "PUT":
        body = request.data if isinstance(request.data, dict) else {}
        digest, url = body.get("daily_digest", False), body.get("webhook_url") or ""
        if not isinstance(digest, bool):
            raise ApiError(400, "daily_digest must be true or false", param="daily_digest", code="invalid_parameter")
        if not isinstance(url, str):
            raise ApiError(400, "webhook_url must be a string", param="webhook_url", code="invalid_parameter")
        try:
            alerts.configure(signed_in(request), low_balance_nano=_threshold(body, "low_balance"),
                             daily_spend_nano=_threshold(body, "daily_spend"), daily_digest=digest, webhook_url=url,
                             rotate_secret=body.get("rotate_secret") is True, actor=signed_in(request), source="api")
        except ValueError as exc:
            raise ApiError(400, str(exc), param="webhook_url", code="invalid_webhook_url") from None
    return Response(alerts.view(signed_in(request)))
