from django.contrib.auth import views as auth_views
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

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
        form.add_error(None, "Your browser's check did not complete; please submit the form again.")
    elif request.method == "POST" and form.is_valid():
        services.sign_up(form.cleaned_data["email"], form.cleaned_data["password"])
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
