from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.translation import gettext, ngettext
from django.views import i18n
from django.views.decorators.http import require_http_methods, require_POST

from levee.accounts import services
from levee.accounts.forms import EmailLoginForm, SignUpForm
from levee.core.metrics import count_signup
from levee.shield import signup as shield_signup
from levee.shield.responses import refuse
from levee.shield.store import ShieldRedisDown


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    # Mode, limits, proof of work (levee.shield.signup); usually already decided by the middleware.
    gate = getattr(request, "shield_signup_gate", None) or shield_signup.gate(request)
    if gate.refusal is not None:
        return gate.refusal
    if gate.honeypot_tripped:  # a bot: tell it what it hopes to hear, create nothing
        return redirect("signup-sent")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and gate.pow_error:
        form.is_valid()
        form.add_error(None, gettext("Your browser's check did not complete; please submit the form again."))
    elif request.method == "POST" and form.is_valid():
        try:
            services.sign_up(form.cleaned_data["email"], form.cleaned_data["password"],
                             language=translation.get_language())
        except services.MailCapped:
            count_signup("mail_capped")
            form.add_error("email", gettext("We have already sent this address as many messages as we send in a "
                                            "day. Please check its inbox (and spam folder), or try again tomorrow."))
        except ShieldRedisDown:
            return refuse(request, 503, shield_signup.UNAVAILABLE, retry_after=30)
        else:
            count_signup("accepted")
            return redirect("signup-sent")
    elif request.method == "POST":
        count_signup("invalid")
    # Each rendering gets a fresh challenge: they are single-use.
    context = {"form": form, "pow_bits": gate.pow_bits, "pow_challenge": gate.challenge()}
    return render(request, "accounts/signup.html", context, status=400 if form.errors else 200)


def signup_sent(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/signup_sent.html")


@require_http_methods(["GET", "POST"])
def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a button; only its POST verifies. Mail scanners and link previews follow GET links,
    so a GET that verified would confirm an address nobody read."""
    if request.method == "GET":
        user = services.check_verification_token(token)
        if user is None:
            return render(request, "accounts/verify_failed.html", status=400)
        return render(request, "accounts/verify_confirm.html", {"email": user.email})
    user = services.verify_email(token)
    if user is None:
        return render(request, "accounts/verify_failed.html", status=400)
    return render(request, "accounts/verified.html", {"verified_user": user})


class LoginView(auth_views.LoginView):
    """Django's login behind the shield's brute-force guard (levee.shield.login). Open in every
    mitigation mode; only the guard's cool-offs stop an attempt."""

    form_class = EmailLoginForm
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_valid(form)
        language = form.get_user().language
        if language:  # the account's preference wins over whatever this browser had
            remember_language(response, language)
        return response

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return _guarded_login(request, "login", lambda: super(LoginView, self).post(request, *args, **kwargs))


def _guarded_login(request: HttpRequest, door: str, attempt: Callable[[], HttpResponse]) -> HttpResponse:
    """Run a login POST through the shield's guard (usually already checked by its middleware)."""
    from levee.shield import login as shield_login
    from levee.shield import store

    guard = getattr(request, "shield_login_guard", None)
    if guard is None:
        guard, refusal = shield_login.gate(request, door=door)
        if refusal is not None:
            return refusal
    assert guard is not None  # gate() hands back a guard whenever it lets the attempt through
    response = attempt()
    try:
        if response.status_code in (301, 302, 303) and request.user.is_authenticated:
            guard.succeeded(response)
        else:
            guard.failed()
    except store.ShieldRedisDown:
        pass  # the answer is already decided; the counters just miss one
    return response


def admin_login(request: HttpRequest) -> HttpResponse:
    """/admin/login/: Django admin's own login behind the same guard as user login, with the staff
    door's tighter tiers and budgets (levee.shield.login)."""
    from django.contrib import admin

    if request.method != "POST":
        return admin.site.login(request)
    return _guarded_login(request, "admin_login", lambda: admin.site.login(request))


def _site() -> tuple[str, bool]:
    """The host and scheme for links in mail: SITE_URL's, never the request's Host header."""
    from urllib.parse import urlsplit

    parts = urlsplit(settings.SITE_URL)
    return parts.netloc, parts.scheme == "https"


class PasswordResetView(auth_views.PasswordResetView):
    """Limited per address and subnet by the shield (levee.shield.doors, in its middleware); the
    account lookup and the mail happen in the platform worker, so the answer and its timing are the
    same whether or not the address has an account."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        from levee.shield import doors

        # Usually decided by the shield's middleware already.
        refusal: HttpResponse | None = (request.shield_reset_refusal if hasattr(request, "shield_reset_refusal")
                                        else doors.reset_gate(request))
        if refusal is not None:
            return refusal
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:
        from levee.accounts.tasks import send_password_reset

        domain, use_https = _site()
        send_password_reset.delay(form.cleaned_data["email"], domain=domain, use_https=use_https)
        return HttpResponseRedirect(self.get_success_url())


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Setting the new password ends every session of the account and revokes its API keys
    (services.after_password_reset); the completion page says how many keys went."""

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        revoked = services.after_password_reset(form.user)
        if revoked:
            messages.warning(self.request, ngettext(
                "%(count)d API key was revoked with the old password. Create new ones after you log in.",
                "%(count)d API keys were revoked with the old password. Create new ones after you log in.",
                revoked) % {"count": revoked})
        return response


def remember_language(response: HttpResponse, language: str) -> None:
    response.set_cookie(settings.LANGUAGE_COOKIE_NAME, language, max_age=settings.LANGUAGE_COOKIE_AGE,
                        path=settings.LANGUAGE_COOKIE_PATH, samesite=settings.LANGUAGE_COOKIE_SAMESITE,  # type: ignore[arg-type]
                        secure=settings.LANGUAGE_COOKIE_SECURE, httponly=settings.LANGUAGE_COOKIE_HTTPONLY)


@require_POST
def set_language(request: HttpRequest) -> HttpResponse:
    """The language switch: Django's set_language (the cookie, and back to `next` on this site),
    and the account's preference when logged in."""
    response = i18n.set_language(request)
    language = request.POST.get("language", "")
    if request.user.is_authenticated and translation.check_for_language(language) \
            and language in dict(settings.LANGUAGES):
        get_user_model().objects.filter(pk=request.user.pk).update(language=language)
    return response
