from typing import Any

from django import forms
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from levee.accounts.models import EMAIL_MAX_LENGTH, User
from levee.accounts.services import clean_email


class SignUpForm(forms.Form):
    email = forms.CharField(max_length=EMAIL_MAX_LENGTH, widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password = forms.CharField(max_length=256, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    # The shield's fields: a honeypot people never see, and the proof of work the browser fills in.
    website = forms.CharField(required=False, max_length=200, widget=forms.TextInput(
        attrs={"autocomplete": "off", "tabindex": "-1"}))
    pow_challenge = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)
    pow_nonce = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)

    def clean_email(self) -> str:
        from levee.shield.emails import is_disposable

        email = clean_email(self.cleaned_data["email"])
        if is_disposable(email):
            raise ValidationError(_("Please use a permanent email address; disposable ones are not accepted."),
                                  code="disposable")
        return email

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data  # what Form.clean returns
        if "email" in data and "password" in data:
            try:
                password_validation.validate_password(data["password"], User(email=data["email"]))
            except ValidationError as exc:
                self.add_error("password", exc)
        return data


class EmailLoginForm(AuthenticationForm):
    """Django's login form with the email label and bounded input; its error never says which part was wrong."""

    username = forms.CharField(label=_("Email"), max_length=EMAIL_MAX_LENGTH,
                               widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))
    password = forms.CharField(label=_("Password"), max_length=256, strip=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))
    error_messages = {**AuthenticationForm.error_messages,
                      "unverified": _("Confirm your address first: open the link we mailed you when you signed up.")}

    unverified = False

    def confirm_login_allowed(self, user: User) -> None:  # type: ignore[override]
        """An unverified account is not logged in: whoever signs up with someone else's address
        must gain nothing (no session, no free chat) until the owner of the inbox confirms it."""
        super().confirm_login_allowed(user)
        if not user.is_verified:
            self.unverified = True
            raise ValidationError(self.error_messages["unverified"], code="unverified")


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's reset form, mailing each account in its own language (its preference, else the page's)."""

    def send_mail(self, subject_template_name: str, email_template_name: str, context: dict,
                  from_email: str | None, to_email: str, html_email_template_name: str | None = None) -> None:
        from django.utils import translation

        with translation.override(getattr(context.get("user"), "language", "") or translation.get_language()):
            super().send_mail(subject_template_name, email_template_name, context, from_email, to_email,
                              html_email_template_name)
