import re

import pytest
from django.core import mail
from django.urls import reverse

from tests.personas import ada

pytestmark = pytest.mark.django_db


def test_it_resets_a_password_through_the_mailed_link(client):
    user = ada()
    response = client.post(reverse("password_reset"), {"email": "ADA@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    path = re.search(r"https?://[^/]+(/accounts/password/reset/\S+/\S+/)", mail.outbox[0].body).group(1)
    form_page = client.get(path, follow=True)
    assert form_page.status_code == 200
    set_url = form_page.redirect_chain[-1][0]
    new = "a brand new passphrase 42"
    done = client.post(set_url, {"new_password1": new, "new_password2": new})
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new)
    # The link is single-use.
    assert client.get(path, follow=True).context["validlink"] is False


def test_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(client):
    ada()
    known = client.post(reverse("password_reset"), {"email": "ada@example.com"})
    unknown = client.post(reverse("password_reset"), {"email": "ghost@example.com"})
    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"]
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ada@example.com"]
