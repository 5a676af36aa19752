import pytest
from django.core import mail
from django.urls import reverse

from levee.accounts.models import User
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db

BAD_EMAILS = [
    "victim@example.com\r\nBcc: everyone@example.com",  # header injection
    "victim@example.com\nSubject: hi",
    "ad\u200ba@example.com",  # zero-width space
    "ada@exa\u200dmple.com",  # zero-width joiner in the domain
    "ada\u0000@example.com",  # NUL
    "ädä@example.com",  # non-ASCII local part
    "ada@@example.com",
    "a" * 250 + "@example.com",  # overlong
    "ada@" + "b" * 300 + ".com",
    "",
    " ",
]


@pytest.mark.parametrize("email", BAD_EMAILS)
def test_sign_up_refuses_odd_emails_cleanly_and_writes_nothing(client, email):
    response = client.post(reverse("signup"), {"email": email, "password": PASSWORD})
    assert response.status_code == 400
    assert User.objects.count() == 0
    assert not mail.outbox


def test_an_internationalised_domain_is_accepted(client):
    response = client.post(reverse("signup"), {"email": "ada@bücher.example", "password": PASSWORD})
    assert response.status_code == 302
    assert User.objects.get().email == "ada@bücher.example"


def test_an_overlong_password_is_refused(client):
    response = client.post(reverse("signup"), {"email": "ada@example.com", "password": "x" * 10_000})
    assert response.status_code == 400
    assert User.objects.count() == 0


def test_an_oversized_body_is_refused_before_it_is_read(client, settings):
    settings.LEVEE_MAX_BODY_BYTES = 2048
    response = client.post(reverse("signup"), {"email": "ada@example.com", "password": "p" * 5000})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert User.objects.count() == 0
