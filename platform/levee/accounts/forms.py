from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from levee.accounts.models import EMAIL_MAX_LENGTH, User
from levee.accounts.services import clean_email


class SignUpForm(forms.Form):
    email = forms.CharField(max_length=EMAIL_MAX_LENGTH, widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password = forms.CharField(max_length=256, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def clean_email(self):
        return clean_email(self.cleaned_data["email"])

    def clean(self):
        data = super().clean()
        if "email" in data and "password" in data:
            try:
                password_validation.validate_password(data["password"], User(email=data["email"]))
            except ValidationError as exc:
                self.add_error("password", exc)
        return data


class EmailLoginForm(AuthenticationForm):
    """Django's login form with the email label and bounded input; its error never says which part was wrong."""

    username = forms.CharField(label="Email", max_length=EMAIL_MAX_LENGTH,
                               widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))
    password = forms.CharField(label="Password", max_length=256, strip=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))
