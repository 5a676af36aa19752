import re

import pytest
from django.core import mail
from django.urls import reverse

from levee.accounts.models import User
from tests.personas import PASSWORD, ada

pytestmark = pytest.mark.django_db


def _link(message) -> str:
    return re.search(r"https?://\S+/accounts/verify/\S+/", message.body).group(0)


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_it_signs_up_verifies_and_logs_in(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("signup"), {"email": "New.Person@Example.COM", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == reverse("signup-sent")
    user = User.objects.get()
    assert user.email == "New.Person@example.com" and not user.is_verified
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["New.Person@example.com"]

    # An unverified account is not logged in: signing up with someone else's address gains nothing.
    refused = client.post(reverse("login"), {"username": "new.person@example.com", "password": PASSWORD})
    assert refused.status_code == 200 and b"Confirm your address first" in refused.content
    assert "_auth_user_id" not in client.session

    # The mailed link shows a button; a GET (what mail scanners do) verifies nothing.
    path = _path(_link(mail.outbox[0]))
    page = client.get(path)
    assert page.status_code == 200 and b"Confirm my address" in page.content
    user.refresh_from_db()
    assert not user.is_verified
    assert client.post(path).status_code == 200
    user.refresh_from_db()
    assert user.is_verified

    assert client.post(reverse("login"), {"username": "new.person@example.com", "password": PASSWORD}).status_code == 302
    assert client.get(reverse("keys-page")).status_code == 200


def test_a_second_account_with_the_same_email_in_other_case_is_refused_without_telling(
        client, django_capture_on_commit_callbacks):
    ada()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("signup"), {"email": "ADA@EXAMPLE.com", "password": PASSWORD})
    # Same answer as a fresh sign-up: a redirect to "check your email".
    assert response.status_code == 302 and response["Location"] == reverse("signup-sent")
    assert User.objects.count() == 1
    assert len(mail.outbox) == 1 and "already has one" in mail.outbox[0].body


def test_the_database_refuses_a_case_variant_duplicate_even_past_the_service():
    from django.db import IntegrityError, transaction

    ada()
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create(email="Ada@Example.com")


def test_a_tampered_or_expired_link_does_not_verify(client, settings, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("signup"), {"email": "eve@example.com", "password": PASSWORD})
    path = _path(_link(mail.outbox[0]))
    assert client.get(path.replace("/verify/", "/verify/x")).status_code == 400
    assert client.post(path.replace("/verify/", "/verify/x")).status_code == 400
    settings.EMAIL_VERIFICATION_MAX_AGE = -1
    assert client.get(path).status_code == 400
    assert client.post(path).status_code == 400
    assert not User.objects.get().is_verified


def test_login_failure_does_not_say_whether_the_account_exists(client):
    ada()
    wrong_password = client.post(reverse("login"), {"username": "ada@example.com", "password": "nope-nope-nope"})
    no_account = client.post(reverse("login"), {"username": "nobody@example.com", "password": "nope-nope-nope"})
    assert wrong_password.status_code == no_account.status_code == 200
    def strip(response):
        return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"|value="[^"]*@example.com"', "",
                      response.content.decode())

    assert strip(wrong_password) == strip(no_account)


def test_weak_passwords_are_refused(client):
    response = client.post(reverse("signup"), {"email": "weak@example.com", "password": "12345678"})
    assert response.status_code == 400
    assert User.objects.count() == 0 and not mail.outbox


@pytest.mark.real_hasher
def test_passwords_are_hashed_with_argon2(client):
    client.post(reverse("signup"), {"email": "hash@example.com", "password": PASSWORD})
    assert User.objects.get().password.startswith("argon2$")
