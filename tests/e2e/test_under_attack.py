"""DeepSeek's January 2025, on a real stack: in under_attack, sign-up says "registration is busy"
while a registered user logs in and an API key still gets its completion."""
import re
import time

import httpx
import openai
import pytest

from levee.billing import services as billing
from levee.keys.services import create_api_key
from tests.e2e.stack import MODEL
from tests.personas import PASSWORD, make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.real_hasher]


def form_token(web: httpx.Client, path: str) -> str | None:
    """The form's CSRF token, as a browser gets to it under attack: a new browser is shown the
    admission layer's check first, solves it (what static/levee/pow.js does), then sees the form."""
    from levee.shield import admission, pow

    page = web.get(path)
    challenge = admission.challenge_in(page.text)
    if challenge:
        passed = web.post(admission.PASS_PATH, data={"pow_challenge": challenge, "pow_nonce": pow.solve(challenge),
                                                     "next": path})
        assert passed.status_code == 303 and "levee_pass" in web.cookies, passed.text[:300]
        page = web.get(path)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    return token.group(1) if token else None


def test_sign_up_is_busy_while_login_and_the_api_keep_working(stack, settings, seeded_catalogue):
    user = make_user("loyal@example.com")
    billing.topup(billing.wallet_for(user), 10**9, source="test", external_id="loyal")
    _, key = create_api_key(user)
    stack.set_mode(settings, "under_attack")
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as web:
            # A sign-up without the hard proof of work (what a flood sends) hears "busy".
            deadline = time.time() + 3
            while True:
                busy = web.post("/accounts/signup/", data={
                    "email": "newcomer@example.com", "password": PASSWORD,
                    "csrfmiddlewaretoken": form_token(web, "/accounts/signup/") or ""})
                if busy.status_code == 503 or time.time() > deadline:
                    break
                time.sleep(0.1)
            assert busy.status_code == 503 and "Registration is busy" in busy.text
            assert int(busy.headers["retry-after"]) > 0

            token = form_token(web, "/accounts/login/")
            assert "levee_pass" in web.cookies  # this browser is new here: it passed the check
            login = web.post("/accounts/login/", data={"username": user.email, "password": PASSWORD,
                                                        "csrfmiddlewaretoken": token})
            assert login.status_code == 302, login.text[:500]
            assert web.get("/keys/").status_code == 200  # logged in
        client = openai.OpenAI(api_key=key, base_url=stack.url + "/v1", max_retries=0, timeout=60)
        completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=6)
        assert completion.choices[0].message.content and completion.usage.completion_tokens > 0
    finally:
        stack.set_mode(settings, "normal")
