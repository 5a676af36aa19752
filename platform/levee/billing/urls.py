"""Billing's owner and public routes (the key-authenticated /user/balance is in levee.urls' api_patterns)."""
from django.urls import path

from levee.billing import views

urlpatterns = [
    path("pricing", views.pricing_page, name="pricing"),
    path("api/pricing", views.pricing_json, name="api-pricing"),
    path("api/usage", views.usage, name="api-usage"),
    path("api/usage/export", views.usage_export, name="api-usage-export"),
    path("api/ledger/export", views.ledger_export, name="api-ledger-export"),
    path("api/vouchers/redeem", views.redeem_voucher, name="api-voucher-redeem"),
    path("api/topups", views.topups, name="api-topups"),
    path("api/alerts", views.alert_settings, name="api-alerts"),
    path("billing/stripe/webhook", views.stripe_webhook, name="stripe-webhook"),
]
