from django.contrib.auth import views as auth_views
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from levee.accounts import services
from levee.accounts.forms import EmailLoginForm, SignUpForm
from levee.core.metrics import count_signup


@require_http_methods(["GET", "POST"])
def signup(request):
    form = SignUpForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            services.sign_up(form.cleaned_data["email"], form.cleaned_data["password"])
            count_signup("accepted")
            return redirect("signup-sent")
        count_signup("invalid")
    return render(request, "accounts/signup.html", {"form": form}, status=400 if form.errors else 200)


def signup_sent(request):
    return render(request, "accounts/signup_sent.html")


def verify_email(request, token: str):
    user = services.verify_email(token)
    if user is None:
        return render(request, "accounts/verify_failed.html", status=400)
    return render(request, "accounts/verified.html", {"verified_user": user})


class LoginView(auth_views.LoginView):
    form_class = EmailLoginForm
    template_name = "accounts/login.html"
    redirect_authenticated_user = True
