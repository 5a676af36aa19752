from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.translation import gettext
from django.views import i18n
from django.views.decorators.http import require_http_methods, require_POST

from levee.accounts import services
from levee.accounts.forms import EmailLoginForm, SignUpForm
from levee.core.metrics import count_signup
from levee.shield import signup as shield_signup


@require_http_methods(["GET", "POST"])
def signup(request):
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
        services.sign_up(form.cleaned_data["email"], form.cleaned_data["password"],
                         language=translation.get_language())
        count_signup("accepted")
        return redirect("signup-sent")
    elif request.method == "POST":
        count_signup("invalid")
    # Each rendering gets a fresh challenge: they are single-use.
    context = {"form": form, "pow_bits": gate.pow_bits, "pow_challenge": gate.challenge()}
    return render(request, "accounts/signup.html", context, status=400 if form.errors else 200)


def signup_sent(request):
    return render(request, "accounts/signup_sent.html")


def verify_email(request, token: str):
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

    def post(self, request, *args, **kwargs):
        from levee.shield import login as shield_login
        from levee.shield import store

        guard = getattr(request, "shield_login_guard", None)  # checked by the shield's middleware
        if guard is None:
            guard, refusal = shield_login.gate(request)
            if refusal is not None:
                return refusal
        response = super().post(request, *args, **kwargs)
        try:
            if response.status_code in (301, 302, 303) and request.user.is_authenticated:
                guard.succeeded(response)
            else:
                guard.failed()
        except store.ShieldRedisDown:
            pass  # the answer is already decided; the counters just miss one
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
