"""The web UI in a real browser (Debian's chromium through Playwright) against a real stack: sign up,
verify from the mailed link, log in, chat with a reply that streams in and one that is stopped,
rename and delete the conversation, create and copy an API key, see the usage, log out. Model text and titles stay text (no XSS).
Screenshots of every page land in test-artifacts/ (gitignored)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from levee.api.models import LlmModel
from levee.chat.models import Conversation, Message
from tests.e2e.stack import MODEL
from tests.personas import PASSWORD, make_user

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.real_hasher,  # accounts made here must log in to the stack, which hashes with Argon2
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make browser)"),
]


@pytest.fixture(autouse=True)
def _seeded(seeded_catalogue):
    return seeded_catalogue


@pytest.fixture(scope="module")
def browser():
    import os

    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Playwright's sync API keeps an event loop on this thread for as long as the browser lives, and
    # Django refuses ORM calls under a loop; the test's (and the flush's) ORM calls are plain sync code.
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            yield chromium
            chromium.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture
def context(browser, stack, request):
    ctx = browser.new_context(base_url=stack.url, viewport={"width": 1200, "height": 850})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    ctx.set_default_timeout(20_000)
    yield ctx
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:  # what the page looked like when the test failed
        for i, page in enumerate(ctx.pages):
            page.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}-{i}.png"), full_page=True)
    ctx.close()


def shot(page, name: str) -> None:
    """Save a screenshot, and check on the way that every form control on the page has a label."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    unlabelled = page.evaluate("""() => [...document.querySelectorAll(
        'input:not([type=hidden]), select, textarea')].filter(el => !el.labels.length
        && !el.getAttribute('aria-label')).map(el => el.name || el.id)""")
    assert unlabelled == [], f"{name}: controls without a label: {unlabelled}"


def mailed_link(mail_dir: Path, to: str, pattern: str, timeout: float = 15) -> str:
    """The path of the first link matching `pattern` in the newest message to `to`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in sorted(mail_dir.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True):
            text = path.read_text()
            if f"To: {to}" in text:
                match = re.search(r"https?://[^/\s]+(" + pattern + r")", text)
                if match:
                    return match.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no mail to {to} with a link like {pattern} in {mail_dir}")


def log_in(page, email: str, password: str = PASSWORD) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for()


def nav(page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def reply_text(page) -> str:
    return page.locator("article.message.assistant").last.locator(".message-body").inner_text()


def test_the_whole_journey(stack, context):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Home, with the price list from the price book.
    page.goto("/")
    assert page.locator("#price-list").get_by_text(MODEL).is_visible()
    shot(page, "01-home")

    # Sign up, then verify through the mailed link.
    email = "grace@example.com"
    page.get_by_role("link", name="Sign up").first.click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long and unusual passphrase 7")
    shot(page, "02-signup")
    page.get_by_role("button", name="Sign up").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    shot(page, "03-signup-sent")
    page.goto(mailed_link(stack.mail_dir, email, r"/accounts/verify/[^/\s]+/"))
    page.get_by_role("button", name="Confirm my address").click()  # a GET alone verifies nothing
    page.get_by_role("heading", name="Email verified").wait_for()
    shot(page, "04-verified")

    # Log in.
    page.get_by_role("link", name="Log in").last.click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long and unusual passphrase 7")
    shot(page, "05-login")
    page.get_by_role("button", name="Log in").click()
    nav(page, "Chat").wait_for()

    # Chat: the reply grows over several observations while it streams.
    LlmModel.objects.filter(name=MODEL).update(default_max_tokens=200)
    nav(page, "Chat").click()
    page.get_by_label("Model").select_option(MODEL)
    page.get_by_label("Your message").fill("Hello! What is Levee?")
    page.get_by_role("button", name="Send").click()
    lengths = []
    deadline = time.time() + 60
    while time.time() < deadline:
        streaming = page.locator("article.message.assistant.streaming").count()
        lengths.append(len(reply_text(page)))
        if not streaming and lengths[-1]:
            break
        page.wait_for_timeout(25)
    growth = sorted({n for n in lengths if n})
    assert len(growth) >= 3, f"the reply did not arrive in pieces: lengths seen {lengths}"
    assert lengths == sorted(lengths), "the reply's text should only grow"
    page.locator("article.message.assistant").last.locator(".message-note").wait_for(state="attached")
    assert page.get_by_role("heading", level=1).inner_text() == "Hello! What is Levee?"
    assert page.locator("#conversation-list a", has_text="Hello! What is Levee?").count() == 1
    shot(page, "06-chat-reply")
    first = Message.objects.get(role="assistant", conversation__user__email=email)
    assert first.status == "complete" and first.content

    # Stop a long reply midway: the part received is kept and marked stopped. The e2e model has
    # random weights and now and then samples its end token early; such a reply is done before
    # Stop lands, so try again (at most three times).
    LlmModel.objects.filter(name=MODEL).update(default_max_tokens=1000)
    for attempt in range(3):
        page.get_by_label("Your message").fill(f"Now tell me a very long story ({attempt}).")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function(
            "() => { const m = [...document.querySelectorAll('article.message.assistant')].pop();"
            " return m && (m.dataset.status || (m.classList.contains('streaming')"
            " && m.querySelector('.message-body').textContent.length > 20)); }")
        try:  # the reply may end (and Stop go away) between any check and the click
            page.get_by_role("button", name="Stop").click(timeout=3000)
        except PlaywrightTimeout:
            pass
        last = page.locator("article.message.assistant").last
        page.wait_for_function(
            "() => [...document.querySelectorAll('article.message.assistant')].pop().dataset.status")
        if last.get_attribute("data-status") == "stopped":
            break
    assert last.locator(".message-note").inner_text() == "Stopped."
    assert page.get_by_role("button", name="Send").is_enabled() and not page.get_by_role("button", name="Stop").is_visible()
    shot(page, "07-chat-stopped")
    stopped = Message.objects.filter(role="assistant", conversation__user__email=email).order_by("-id").first()
    assert stopped.status == "stopped" and stopped.content and 0 < stopped.completion_tokens < 1000

    # Rename the conversation in the list (a title is text, even one that looks like markup), then
    # delete it: asked first; the open conversation goes and the page is an empty chat again.
    conversation = Conversation.objects.get(user__email=email)
    page.get_by_role("button", name="Rename “Hello! What is Levee?”").click()
    page.get_by_label("New title").fill("  Levee <b>notes</b> ")
    shot(page, "07b-chat-renaming")
    page.get_by_label("New title").press("Enter")
    page.locator("#conversation-list a", has_text="Levee <b>notes</b>").wait_for()
    assert page.get_by_role("heading", level=1).inner_text() == "Levee <b>notes</b>"
    assert page.title() == "Levee <b>notes</b> · Levee"
    conversation.refresh_from_db()
    assert conversation.title == "Levee <b>notes</b>"
    delete = page.get_by_role("button", name="Delete “Levee <b>notes</b>”")
    page.once("dialog", lambda dialog: dialog.dismiss())
    delete.click()
    assert page.locator("#conversation-list a").count() == 1 and Conversation.objects.filter(pk=conversation.pk).exists()
    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    page.wait_for_url(re.compile(r"/chat/$"))
    assert page.get_by_role("heading", level=1).inner_text() == "New chat"
    assert page.locator("#no-conversations").is_visible()
    assert not Conversation.objects.filter(user__email=email).exists()
    assert not Message.objects.filter(conversation__user__email=email).exists()
    shot(page, "07c-chat-deleted")

    # An API key: shown once, copied to the clipboard, and it works.
    nav(page, "API keys").click()
    page.get_by_label("Name (to tell your keys apart)").fill("browser")
    page.get_by_role("button", name="Create key").click()
    page.get_by_role("heading", name="Your new key").wait_for()
    key = page.locator("#new-key-value").inner_text()
    assert key.startswith("sk-")
    page.locator("#copy-key").click()
    page.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == key
    assert page.locator("#keys tbody tr").first.inner_text().startswith("browser")
    shot(page, "08-keys")
    me = httpx.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["email"] == email

    # The chat's usage shows on the usage page (free web chat, per model).
    nav(page, "Usage").click()
    table = page.locator("#usage-table")
    assert "web chat (free)" in table.inner_text() and MODEL in table.inner_text()
    assert page.locator("#tokens-chart rect[fill]").count() >= 2
    shot(page, "09-usage")

    # Log out.
    page.get_by_role("button", name="Log out").click()
    nav(page, "Log in").wait_for()
    shot(page, "10-logged-out")
    assert errors == []


XSS = "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>"


def test_model_text_and_titles_render_as_text_not_html(stack, context):
    user = make_user("mallory@example.com")
    conversation = Conversation.objects.create(user=user, model=MODEL, title=XSS)
    Message.objects.create(conversation=conversation, role="user", content=XSS)
    Message.objects.create(conversation=conversation, role="assistant", reasoning=f"First, {XSS}\nthen the answer.", content=(
        f"Here you go: {XSS}\n\n**bold** and *italic* with `{XSS}`\n\n"
        "- a [good link](https://example.com/docs)\n- a [bad link](javascript:window.__xss=3)\n\n"
        f"```html\n{XSS}\n```"))
    page = context.new_page()
    log_in(page, user.email)
    page.goto(f"/chat/{conversation.pk}/")
    page.locator("article.message.assistant pre code").wait_for()
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__xss") == "undefined"
    reply = page.locator("article.message.assistant .message-body")
    assert XSS in reply.inner_text() and reply.locator("img, script").count() == 0
    assert page.locator("article.message.user .message-body").inner_text() == XSS
    assert page.get_by_role("heading", level=1).inner_text() == XSS
    assert page.locator("#conversation-list a").first.inner_text() == XSS
    assert reply.locator("strong").inner_text() == "bold" and reply.locator("em").inner_text() == "italic"
    links = reply.locator("a")
    assert links.count() == 1 and links.first.get_attribute("href") == "https://example.com/docs"
    assert "[bad link](javascript:window.__xss=3)" in reply.inner_text()
    # A reasoner's stored thinking: above the answer, collapsed, and text too.
    thinking = page.locator("article.message.assistant details.reasoning")
    assert thinking.get_attribute("open") is None and thinking.locator("summary").inner_text() == "Thought"
    thinking.locator("summary").click()
    assert thinking.locator(".reasoning-body").inner_text() == f"First, {XSS}\nthen the answer."
    assert thinking.locator("img, script").count() == 0
    # On a phone-sized screen the list stacks above the transcript.
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "11b-chat-narrow")
    assert page.locator(".chat-list").bounding_box()["y"] < page.locator(".chat-main").bounding_box()["y"]
    page.set_viewport_size({"width": 1200, "height": 850})
    # A code block has its own copy button.
    page.get_by_role("button", name="Copy code").click()
    assert page.evaluate("navigator.clipboard.readText()") == XSS
    shot(page, "11-xss-as-text")

    # Typed live, the same text goes out and comes back as text too.
    page.get_by_label("Your message").fill(XSS)
    page.get_by_role("button", name="Send").click()
    page.locator("article.message.user").nth(1).wait_for()
    page.locator("article.message.assistant:not(.streaming)").nth(1).wait_for(timeout=60_000)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("article.message.user .message-body").nth(1).inner_text() == XSS


def test_a_reasoners_thinking_shows_collapsed_above_its_answer(stack, context):
    """The stack's random-weight model never thinks, so the reply's events are scripted here (the
    page's script is what is under test): reasoning, then the answer, then done."""
    import json

    user = make_user("thinker@example.com")
    conversation = Conversation.objects.create(user=user, model=MODEL, title="Sums")
    page = context.new_page()
    log_in(page, user.email)
    page.goto(f"/chat/{conversation.pk}/")

    def sse(event, data):
        return f"event: {event}\ndata: {json.dumps(data)}\n\n"

    body = "".join([
        sse("start", {"conversation": {"id": conversation.pk, "title": "Sums", "model": MODEL, "updated_at": ""},
                      "question_id": 1, "reply_id": 2, "max_tokens": 100}),
        sse("reasoning", {"text": "Two and two "}), sse("reasoning", {"text": f"make four. {XSS}"}),
        sse("delta", {"text": "It is "}), sse("delta", {"text": "**4**."}),
        sse("done", {"status": "complete", "finish_reason": "stop", "usage": {}}),
    ])
    page.route("**/messages", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    page.get_by_label("Your message").fill("What is 2 + 2?")
    page.get_by_role("button", name="Send").click()
    reply = page.locator("article.message.assistant:not(.streaming)")
    reply.wait_for()
    thinking = reply.locator("details.reasoning")
    assert thinking.get_attribute("open") is None and thinking.locator("summary").inner_text() == "Thought"
    assert reply.locator(".message-body").inner_text() == "It is 4." and reply.locator("strong").count() == 1
    thinking.locator("summary").click()
    assert thinking.locator(".reasoning-body").inner_text() == f"Two and two make four. {XSS}"
    assert page.evaluate("typeof window.__xss") == "undefined"
    shot(page, "11c-chat-reasoning")


def test_the_password_reset_pages_are_ours(stack, context):
    make_user("reset@example.com")
    page = context.new_page()
    page.goto("/accounts/login/")
    page.get_by_role("link", name="Forgot your password?").click()
    shot(page, "12-password-reset")
    page.get_by_label("Email").fill("reset@example.com")
    page.get_by_role("button", name="Send the link").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    page.goto(mailed_link(stack.mail_dir, "reset@example.com", r"/accounts/password/reset/\S+/\S+/"))
    page.get_by_label("New password").fill("another long passphrase 99")
    page.get_by_label("The same again").fill("another long passphrase 99")
    shot(page, "13-password-new")
    page.get_by_role("button", name="Set the password").click()
    page.get_by_role("heading", name="Password changed").wait_for()
    log_in(page, "reset@example.com", "another long passphrase 99")
    assert page.get_by_role("button", name="Log out").is_visible()


def test_under_attack_sign_up_is_busy_while_login_still_works(stack, context, settings):
    from levee.shield import limiter, store
    from levee.shield.services import set_mode
    from levee.shield.subjects import SignupTrickle

    make_user("steady@example.com")
    settings.SHIELD_REDIS_URL = stack.redis_url  # the mode's mirror and the limits are the stack's
    store.reset()
    trickle = SignupTrickle()
    set_mode("under_attack", reason="browser test", pinned=True)
    try:
        # A flood has used up the few sign-ups a minute that under_attack still admits.
        while limiter.check([trickle], {"requests": 1}).allowed:
            pass
        page = context.new_page()
        deadline = time.time() + 10  # every process re-reads the mode within a second
        while True:
            response = page.goto("/accounts/signup/")
            if response.status == 503 or time.time() > deadline:
                break
            page.wait_for_timeout(300)
        assert response.status == 503 and int(response.headers["retry-after"]) > 0
        assert page.get_by_role("heading", level=1).inner_text() == "Registration is busy"
        assert page.get_by_role("status").first.inner_text().startswith("We are under heavy load")
        shot(page, "14-signup-busy")
        log_in(page, "steady@example.com")
        # A new browser under attack got the admission layer's check first, solved it and kept the pass.
        assert any(cookie["name"] == "levee_pass" for cookie in context.cookies())
        assert page.get_by_role("status").first.inner_text().startswith("We are under heavy load")
        shot(page, "15-logged-in-under-attack")
    finally:
        set_mode("normal", reason="browser test done", pinned=False)
        store.client().delete(*[trickle.redis_key(rule) for rule in trickle.rules()])
        store.reset()
