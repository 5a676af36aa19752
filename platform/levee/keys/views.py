from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext, gettext_lazy, pgettext
from rest_framework import serializers, status
from rest_framework.decorators import api_view, authentication_classes
from rest_framework.request import Request
from rest_framework.response import Response

from levee.accounts.models import User
from levee.accounts.operators import signed_in
from levee.core.errors import ApiError
from levee.core.middleware import sessionless
from levee.keys import services
from levee.keys.authentication import ApiKeyAuthentication
from levee.keys.models import ApiKey
from levee.keys.serializers import (
    CAP_NAMES,
    ApiKeySerializer,
    CapsSerializer,
    CreateApiKeySerializer,
    parse_cap,
)


@api_view(["GET", "POST"])
def keys_collection(request: Request) -> Response:
    """The owner's keys (session-authenticated, CSRF-checked). POST returns the secret once."""
    if request.method == "GET":
        keys = ApiKey.objects.filter(user=signed_in(request))
        return Response({"object": "list", "data": ApiKeySerializer(keys, many=True).data})
    form = CreateApiKeySerializer(data=request.data)
    form.is_valid(raise_exception=True)
    fields = dict(form.validated_data)
    wanted_caps = {name: fields.pop(name) for name in CAP_NAMES if name in fields}
    try:
        with transaction.atomic():
            key, raw = services.create_api_key(signed_in(request), **fields)
            if any(value is not None for value in wanted_caps.values()):
                _set_caps(key, wanted_caps, actor=signed_in(request))
    except services.KeyRefused as exc:
        raise ApiError(403 if exc.code in {"email_not_verified", "account_inactive"} else 422,
                       exc.message, code=exc.code) from None
    return Response({**ApiKeySerializer(key).data, "key": raw}, status=status.HTTP_201_CREATED)


def _set_caps(key: ApiKey, wanted: dict[str, int | None], *, actor: User | None, source: str = "owner") -> None:
    """Apply the caps named in `wanted` ({"daily_cap": nano | None, …}); the others stay."""
    from levee.billing import caps

    current = {"daily_cap": key.daily_cap_nano, "monthly_cap": key.monthly_cap_nano,
               "lifetime_cap": key.lifetime_cap_nano}
    merged = {**current, **wanted}
    caps.set_caps(key, daily=merged["daily_cap"], monthly=merged["monthly_cap"], lifetime=merged["lifetime_cap"],
                  actor=actor, source=source)


@api_view(["GET", "PATCH"])
def key_detail(request: Request, key_id: int) -> Response:
    """GET /api/keys/<id>: one key; PATCH {"daily_cap": "5.00", "monthly_cap": null, …} sets or
    removes its spend caps (names left out keep their value)."""
    key = get_object_or_404(ApiKey, pk=key_id, user=signed_in(request))
    if request.method == "PATCH":
        form = CapsSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        if form.validated_data:
            _set_caps(key, form.validated_data, actor=signed_in(request))
    return Response(ApiKeySerializer(key).data)


@api_view(["POST"])
def revoke_key(request: Request, key_id: int) -> Response:
    key = get_object_or_404(ApiKey, pk=key_id, user=signed_in(request))
    services.revoke_api_key(key, by=signed_in(request))
    return Response(ApiKeySerializer(key).data)


@sessionless
@api_view(["GET"])
@authentication_classes([ApiKeyAuthentication])
def whoami(request: Request) -> Response:
    """The smallest key-authenticated endpoint: who does this key belong to."""
    key = cast(ApiKey, request.auth)  # what ApiKeyAuthentication authenticates with
    return Response({"object": "account", "email": signed_in(request).email,
                     "key": {"prefix": key.prefix, "name": key.name}})


@login_required
def keys_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _caps_form(request)
    keys = list(ApiKey.objects.filter(user=signed_in(request)))
    from levee.billing.pricing import currency

    rows = []
    for key in keys:
        caps = ApiKeySerializer(key).data["spend_caps"]
        rows.append({"key": key, "any_cap": any(caps.values()),
                     "cap_list": [(name, label, caps[name]) for name, label in zip(CAP_NAMES, CAP_LABELS, strict=True)]})
    return render(request, "keys/keys.html", {"keys": keys, "rows": rows, "currency": currency()})


CAP_LABELS = (gettext_lazy("Daily"), gettext_lazy("Monthly"), gettext_lazy("Lifetime"))


def _caps_form(request: HttpRequest) -> HttpResponse:
    """The keys page's spend-cap form: one key's three caps (an empty field removes that cap)."""
    key = get_object_or_404(ApiKey, pk=request.POST.get("key_id") or 0, user=signed_in(request), revoked_at__isnull=True)
    wanted, wrong = {}, []
    for name, label in zip(CAP_NAMES, CAP_LABELS, strict=True):
        try:
            wanted[name] = parse_cap(request.POST.get(name, "").strip(), name)
        except serializers.ValidationError:
            wrong.append(str(label))
    if wrong:
        messages.error(request, gettext("%(caps)s: enter a positive amount like 5.00 (at most nine decimal places), "
                                        "or leave the field empty for no cap.")
                       % {"caps": pgettext("list separator", ", ").join(wrong)})
        return redirect("keys-page")
    _set_caps(key, wanted, actor=signed_in(request))
    messages.success(request, gettext("Spend caps of %(key)s saved: %(caps)s.")
                     % {"key": key.name or key.prefix, "caps": describe_caps(key)})
    return redirect("keys-page")


def describe_caps(key: ApiKey) -> str:
    """billing.caps.describe() for the page: in the reader's language, amounts as it writes numbers
    (the audit log keeps describe()'s English)."""
    from levee.billing.caps import FIELDS, ORDER, cap_places
    from levee.billing.money import localized

    parts = []
    for period, label in zip(ORDER, CAP_LABELS, strict=True):
        nano = getattr(key, FIELDS[period])
        amount = localized(nano, places=cap_places(nano)) if nano is not None else gettext("none")
        parts.append(gettext("%(period)s %(amount)s") % {"period": label, "amount": amount})
    return pgettext("list separator", ", ").join(parts)
