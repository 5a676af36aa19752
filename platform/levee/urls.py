from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from django.views.i18n import JavaScriptCatalog

from levee.accounts import views as accounts
from levee.accounts.forms import PasswordResetForm
from levee.api import anthropic, completions
from levee.api import views as api
from levee.billing import pages as billing_pages
from levee.billing import views as billing
from levee.core import views as core
from levee.home import views as home
from levee.keys import views as keys

# The admin's own header and titles (Django's default says "Django administration"), in both languages.
admin.site.site_header = _("Levee administration")
admin.site.site_title = _("Levee admin")
admin.site.index_title = _("Operations")

handler404 = "levee.core.views.not_found"
handler500 = "levee.core.views.server_error"
handler400 = "levee.core.views.bad_request"

account_patterns = [
    path("signup/", accounts.signup, name="signup"),
    path("signup/sent/", accounts.signup_sent, name="signup-sent"),
    path("verify/<str:token>/", accounts.verify_email, name="verify-email"),
    path("login/", accounts.LoginView.as_view(), name="login"),
    path("language/", accounts.set_language, name="set-language"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/reset/", accounts.PasswordResetView.as_view(form_class=PasswordResetForm), name="password_reset"),
    path("password/reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("password/reset/<uidb64>/<token>/", accounts.PasswordResetConfirmView.as_view(),
         name="password_reset_confirm"),
    path("password/reset/complete/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
]

# The OpenAI-compatible API answers at the bare base URL and under /v1, as DeepSeek's does.
api_patterns = [
    path("me", keys.whoami, name="api-whoami"),
    path("models", api.list_models, name="api-models"),
    path("chat/completions", api.chat_completions, name="api-chat-completions"),
    path("user/balance", billing.user_balance, name="api-user-balance"),
]

# DeepSeek's beta base URL (prefix completion, strict functions, FIM) and its Anthropic base URL.
beta_patterns = [
    path("chat/completions", api.beta_chat_completions, name="api-beta-chat-completions"),
    path("completions", completions.beta_completions, name="api-beta-completions"),
    path("models", api.list_models),
]
anthropic_patterns = [
    path("v1/messages", anthropic.messages, name="anthropic-messages"),
    path("v1/messages/count_tokens", anthropic.count_tokens, name="anthropic-count-tokens"),
    path("v1/models", api.list_models),
]

urlpatterns = [
    path("", home.home, name="home"),
    path("beta/", include(beta_patterns)),
    path("anthropic/", include(anthropic_patterns)),
    path("healthz", core.healthz, name="healthz"),
    path("", include("levee.core.urls")),  # /readyz, /metrics, /admin/dashboard/
    path("accounts/", include(account_patterns)),
    path("keys/", keys.keys_page, name="keys-page"),
    path("usage/", billing_pages.usage_page, name="usage-page"),
    path("usage/topup", billing_pages.topup_start, name="topup-start"),
    path("usage/alerts", billing_pages.alerts_form, name="alerts-form"),
    path("usage/topup/<uuid:payment_id>", billing_pages.topup_result, name="topup-result"),
    path("api/keys", keys.keys_collection, name="api-keys"),
    path("api/keys/<int:key_id>", keys.key_detail, name="api-key-detail"),
    path("api/keys/<int:key_id>/revoke", keys.revoke_key, name="api-key-revoke"),
    path("v1/", include(api_patterns)),
    path("", include(api_patterns)),
    path("", include("levee.billing.urls")),
    path("chat/", include("levee.chat.urls")),
    path("admin/login/", accounts.admin_login),  # the shield's login guard in front of the admin's form
    path("admin/", admin.site.urls),
    path("jsi18n/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
]
