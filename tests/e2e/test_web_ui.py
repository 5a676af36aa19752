"""The web UI in both languages and both colour schemes, at a phone's and a desktop's width, in Debian's
chromium against the real stack: no page scrolls sideways, axe-core finds no serious or critical
violation, the journey from sign-up to a streamed reply works in Chinese, and regenerate, edit,
search and export work. Screenshots of every page in every combination go to
test-artifacts/browser/ui/ (gitignored)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from levee.api.models import LlmModel
from levee.billing.services import record_free_usage
from levee.chat.models import Conversation, Message
from levee.keys.services import create_api_key
from tests.e2e.stack import MODEL
from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, browser, mailed_link  # noqa: F401 (browser: a fixture)
from tests.personas import PASSWORD, make_user

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
SHOTS = ARTIFACTS / "ui"
WIDTHS = {"narrow": 390, "wide": 1280}
LOCALES = {"en": "en-US", "zh": "zh-CN"}

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.real_hasher,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make browser)"),
]


@pytest.fixture(autouse=True)
def _seeded(seeded_catalogue):
    return seeded_catalogue


_open: list = []


@pytest.fixture(autouse=True)
def _failure_shots(request):
    """What each open page looked like when a test failed (FAILED-<test>-<n>.png)."""
    yield
    failed = getattr(request.node, "rep_call", None)
    for ctx in _open:
        try:
            if failed is not None and failed.failed:
                for i, page in enumerate(ctx.pages):
                    page.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}-{i}.png"), full_page=True)
            ctx.close()
        except Exception:  # already closed by the test
            pass
    _open.clear()


def new_context(chromium, stack, *, lang: str = "en", scheme: str = "light", width: int = 1280, **extra):
    # bypass_csp: axe-core is injected as a script of the test's, which a strict page policy would refuse.
    ctx = chromium.new_context(base_url=stack.url, viewport={"width": width, "height": 900}, locale=LOCALES[lang],
                              color_scheme=scheme, bypass_csp=True, **extra)
    ctx.set_default_timeout(20_000)
    _open.append(ctx)
    return ctx


def log_in(page, email: str, *, button: str = "Log in") -> None:
    page.goto("/accounts/login/")
    page.locator("#id_username").fill(email)
    page.locator("#id_password").fill(PASSWORD)
    page.locator("form.form-narrow button[type=submit]").click()
    page.locator("header form[action$='/logout/'] button").wait_for()


def axe_violations(page) -> list[str]:
    """Serious and critical axe-core violations of the page as it is, one line each."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
          .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '));
    }""")
    return found


def sideways(page) -> int:
    """How far the page scrolls sideways (0 when it fits its viewport)."""
    return page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")


@pytest.fixture
def furnished(stack):
    """An account with something on every page: a chat with code and thinking, a key, usage."""
    user = make_user("page@example.com")
    conversation = Conversation.objects.create(user=user, model=MODEL, title="排序算法 and sorting")
    Message.objects.create(conversation=conversation, role="user", content="用 Python 写一个快速排序，并解释一下。")
    Message.objects.create(conversation=conversation, role="assistant", model=MODEL, reasoning="先选基准，再分区。",
                           content="这是一个**快速排序**的实现：\n\n```python\ndef quicksort(xs):\n"
                                   "    # 选第一个元素作为基准\n    if len(xs) <= 1:\n        return xs\n"
                                   "    pivot, rest = xs[0], xs[1:]\n    return quicksort([x for x in rest if x < pivot]) "
                                   "+ [pivot] + quicksort([x for x in rest if x >= pivot])\n```\n\n"
                                   "一个很长的没有空格的词：" + "超长文本" * 40 + " and a_very_long_identifier_" * 3)
    create_api_key(user, name="笔记本")
    now = time.time()
    from django.utils import timezone

    at = timezone.now()
    record_free_usage(user=user, model=MODEL, request_id=f"r{now}", prompt_cache_hit_tokens=0,
                      prompt_cache_miss_tokens=1500, completion_tokens=700, started_at=at, finished_at=at)
    return user, conversation


ANONYMOUS = {"home": "/", "pricing": "/pricing/", "login": "/accounts/login/", "signup": "/accounts/signup/",
             "signup-sent": "/accounts/signup/sent/", "reset": "/accounts/password/reset/", "404": "/no/such/page/"}


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_page_fits_and_passes_axe_in_each_language_and_scheme(browser, stack, furnished, lang, scheme):  # noqa: F811
    user, conversation = furnished
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {}
    for width_name, width in WIDTHS.items():
        ctx = new_context(browser, stack, lang=lang, scheme=scheme, width=width)
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
        pages = dict(ANONYMOUS)
        for name, path in list(pages.items()):
            page.goto(path)
            check(page, f"{lang}-{scheme}-{width_name}-{name}", problems, axe=width_name == "wide")
        log_in(page, user.email)
        signed_in = {"chat": "/chat/", "conversation": f"/chat/{conversation.pk}/", "keys": "/keys/",
                     "usage": "/usage/"}
        for name, path in signed_in.items():
            page.goto(path)
            if name == "conversation":
                page.locator("pre code.hljs").wait_for()
            check(page, f"{lang}-{scheme}-{width_name}-{name}", problems, axe=width_name == "wide")
        page.goto(f"/chat/{conversation.pk}/")
        page.locator("#shortcuts-button").click()
        page.locator("#shortcuts").wait_for()
        check(page, f"{lang}-{scheme}-{width_name}-shortcuts", problems, axe=width_name == "wide")
        expected_lang = "zh-hans" if lang == "zh" else "en"
        assert page.evaluate("document.documentElement.lang") == expected_lang
        assert errors == [], errors
        ctx.close()
    assert problems == {}


def check(page, name: str, problems: dict, *, axe: bool) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    found = []
    over = sideways(page)
    if over > 0:
        found.append(f"scrolls sideways by {over}px")
    if axe:
        found += axe_violations(page)
    if found:
        problems[name] = found


def test_the_scheme_switch_persists_and_the_server_renders_it(browser, stack):  # noqa: F811
    ctx = new_context(browser, stack, scheme="light")
    page = ctx.new_page()
    page.goto("/pricing/")
    background = "getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    page.get_by_label("Colour scheme").select_option("dark")
    dark = page.evaluate(background)
    assert light == "rgb(255, 255, 255)" and dark != light
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"  # from the cookie, server-side
    assert page.evaluate(background) == dark and page.get_by_label("Colour scheme").input_value() == "dark"
    page.get_by_label("Colour scheme").select_option("auto")
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") is None
    assert page.evaluate(background) == light  # the system's light scheme again
    ctx.close()
    ctx = new_context(browser, stack, scheme="dark")  # a dark system, nothing chosen: dark
    page = ctx.new_page()
    page.goto("/pricing/")
    assert page.evaluate(background) == dark
    ctx.close()


def test_the_language_switch_persists_on_the_account(browser, stack):  # noqa: F811
    user = make_user("switch@example.com")
    ctx = new_context(browser, stack, lang="en")
    page = ctx.new_page()
    log_in(page, user.email)
    page.goto("/usage/")
    page.get_by_label("Language").select_option("zh-hans")
    page.wait_for_url(re.compile(r"/usage/$"))
    page.get_by_role("heading", level=1, name="用量与账单").wait_for()
    user.refresh_from_db()
    assert user.language == "zh-hans"
    ctx.close()
    ctx = new_context(browser, stack, lang="en")  # another browser, English: the account's choice wins
    page = ctx.new_page()
    log_in(page, user.email)
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    ctx.close()


def _wait_reply(page, index: int | None = None) -> str:
    page.wait_for_function("""() => { const m = [...document.querySelectorAll('article.message.assistant')].pop();
        return m && !m.classList.contains('streaming') && m.dataset.status; }""", timeout=60_000)
    return page.locator("article.message.assistant").last.locator(".message-body").inner_text()


def test_sign_up_to_a_streamed_reply_then_regenerate_edit_search_export_in_chinese(browser, stack):  # noqa: F811
    LlmModel.objects.filter(name=MODEL).update(default_max_tokens=200)
    ctx = new_context(browser, stack, lang="zh", width=390, accept_downloads=True)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    SHOTS.mkdir(parents=True, exist_ok=True)

    page.goto("/")
    page.get_by_role("link", name="注册").first.click()
    email = "xiaoming@example.com"
    page.get_by_label("邮箱").fill(email)
    page.get_by_label("密码").fill("一个足够长而且不常见的口令 7")
    page.get_by_role("button", name="注册").click()
    page.get_by_role("heading", name="请查收邮件").wait_for()
    page.goto(mailed_link(stack.mail_dir, email, r"/accounts/verify/[^/\s]+/"))
    page.locator("main form button[type=submit]").click()  # the link confirms by POST (a GET verifies nothing)
    page.get_by_role("heading", name="邮箱已验证").wait_for()
    page.get_by_role("main").get_by_role("link", name="登录").click()
    page.get_by_label("邮箱").fill(email)
    page.get_by_label("密码").fill("一个足够长而且不常见的口令 7")
    page.locator("form.form-narrow").get_by_role("button", name="登录").click()
    page.get_by_role("navigation", name="主导航").get_by_role("link", name="对话").click()

    # A streamed reply: it grows over several observations. (On a loaded machine the worker's
    # heartbeat can lapse for a moment, and the chat then answers 503: wait until it is seen.)
    stack.wait_until(lambda: stack.live_workers() > 0, "inference worker heartbeat")
    page.get_by_label("模型").select_option(MODEL)
    page.get_by_label("你的消息").fill("你好！请介绍一下 Levee。")
    page.get_by_role("button", name="发送").click()
    lengths = []
    deadline = time.time() + 60
    while time.time() < deadline:
        streaming = page.locator("article.message.assistant.streaming").count()
        lengths.append(len(page.locator("article.message.assistant").last.locator(".message-body").inner_text()))
        if not streaming and lengths[-1]:
            break
        page.wait_for_timeout(25)
    # Seen growing at least once (the page is polled over the test's connection, so on a loaded
    # machine a short reply may show only a few of its steps).
    assert len({n for n in lengths if n}) >= 2, f"the reply did not arrive in pieces: {lengths}"
    assert _wait_reply(page)
    assert page.get_by_role("heading", level=1).inner_text() == "你好！请介绍一下 Levee。"
    assert "今日免费对话" in page.locator(".quota").inner_text()
    page.screenshot(path=str(SHOTS / "zh-journey-1-reply.png"), full_page=True)
    conversation = Conversation.objects.get(user__email=email)

    # Regenerate: the last reply is replaced by a new one to the same question.
    old_id = page.locator("article.message.assistant").last.get_attribute("data-message-id")
    page.get_by_role("button", name="重新生成").click()
    _wait_reply(page)
    new_id = page.locator("article.message.assistant").last.get_attribute("data-message-id")
    assert new_id != old_id and page.locator("article.message").count() == 2
    assert list(conversation.messages.values_list("pk", flat=True))[-1] == int(new_id)
    assert not Message.objects.filter(pk=int(old_id)).exists()
    page.screenshot(path=str(SHOTS / "zh-journey-2-regenerated.png"), full_page=True)

    # A second turn, then edit the first question: it and everything after it are replaced.
    page.get_by_label("你的消息").fill("第二个问题")
    page.get_by_role("button", name="发送").click()
    _wait_reply(page)
    assert page.locator("article.message").count() == 4
    page.locator("article.message.user").first.get_by_role("button", name="编辑").click()
    box = page.get_by_label("编辑你的消息")
    assert "及其后的 3 条消息" in page.locator(".edit-note").inner_text()
    page.screenshot(path=str(SHOTS / "zh-journey-3-editing.png"), full_page=True)
    box.fill("改过的第一个问题：什么是混合专家模型？")
    box.press("Enter")
    _wait_reply(page)
    users = page.locator("article.message.user .message-body").all_inner_texts()
    assert users == ["改过的第一个问题：什么是混合专家模型？"] and page.locator("article.message").count() == 2
    assert list(conversation.messages.filter(role="user").values_list("content", flat=True)) == [users[0]]
    page.reload()  # what the server kept is what the page showed
    assert page.locator("article.message.user .message-body").all_inner_texts() == users

    # Search (the shortcut focuses it): Chinese words without spaces are found.
    page.locator("body").press("/")
    assert page.evaluate("document.activeElement.id") == "search-input"
    page.keyboard.type("混合专家")
    page.locator("#search-results a").first.wait_for()
    assert "混合专家" in page.locator("#search-results mark").first.inner_text()
    assert "找到 1 个对话" in page.locator("#search-status").inner_text()
    page.screenshot(path=str(SHOTS / "zh-journey-4-search.png"), full_page=True)
    page.locator("#search-results a").first.click()
    page.wait_for_url(re.compile(rf"/chat/{conversation.pk}/#message-\d+$"))
    page.locator("article.message.target").wait_for()

    # Export: Markdown in the reader's language, JSON with every message.
    with page.expect_download() as md:
        page.get_by_role("link", name="Markdown").click()
    text = Path(md.value.path()).read_text(encoding="utf-8")
    assert md.value.suggested_filename == f"levee-chat-{conversation.pk}.md"
    assert text.startswith("# 你好！请介绍一下 Levee。\n\n## 你\n\n改过的第一个问题") and "## 助手 (" in text
    with page.expect_download() as js:
        page.get_by_role("link", name="JSON").click()
    data = json.loads(Path(js.value.path()).read_text(encoding="utf-8"))
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]

    # Esc stops a reply being written.
    LlmModel.objects.filter(name=MODEL).update(default_max_tokens=1000)
    for attempt in range(3):
        page.get_by_label("你的消息").fill(f"讲一个很长的故事（{attempt}）")
        page.get_by_role("button", name="发送").click()
        page.wait_for_function("() => document.querySelector('article.message.assistant.streaming .message-body')"
                               " && document.querySelector('article.message.assistant.streaming .message-body')"
                               ".textContent.length > 10 || !document.querySelector('.streaming')")
        page.keyboard.press("Escape")
        _wait_reply(page)
        if page.locator("article.message.assistant").last.get_attribute("data-status") == "stopped":
            break
    assert page.locator("article.message.assistant").last.locator(".message-note").inner_text() == "已停止。"
    assert errors == []
    ctx.close()


def test_code_is_highlighted_as_text_and_copied(browser, stack, furnished):  # noqa: F811
    user, conversation = furnished
    xss = "<img src=x onerror=window.__xss=1>"
    Message.objects.create(conversation=conversation, role="assistant", model=MODEL,
                           content=f"```javascript\nconst a = \"{xss}\"; // {xss}\n```")
    ctx = new_context(browser, stack, scheme="dark")
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    page = ctx.new_page()
    log_in(page, user.email)
    page.goto(f"/chat/{conversation.pk}/")
    code = page.locator("article.message.assistant").last.locator("pre code.hljs")
    code.wait_for()
    assert code.locator(".hljs-keyword").first.inner_text() == "const"
    assert code.locator(".hljs-string").first.inner_text() == f'"{xss}"'
    assert code.locator("img").count() == 0 and page.evaluate("typeof window.__xss") == "undefined"
    page.locator("article.message.assistant").last.get_by_role("button", name="Copy code").click()
    assert page.evaluate("navigator.clipboard.readText()") == f'const a = "{xss}"; // {xss}'
    # The shortcuts list opens with "?" and closes with Escape.
    page.locator("body").press("?")
    page.get_by_role("dialog", name="Keyboard shortcuts").wait_for()
    page.keyboard.press("Escape")
    page.get_by_role("dialog").wait_for(state="hidden")
    ctx.close()
