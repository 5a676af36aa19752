"""Simplified Chinese: chosen from Accept-Language or the switch (a cookie and the account's
preference), every page and email translated, numbers and dates per language, the API in English."""
import re
from html.parser import HTMLParser

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from levee.accounts.models import User
from levee.billing.services import record_free_usage
from levee.chat.models import Conversation, Message
from tests.personas import PASSWORD, ada, make_user

pytestmark = pytest.mark.django_db
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9,en;q=0.5"}


def test_a_chinese_browser_gets_chinese_pages(client):
    response = client.get(reverse("home"), **ZH)
    page = response.content.decode()
    assert '<html lang="zh-hans"' in page and "与开放模型对话" in page
    assert response["Content-Language"] == "zh-hans" and "Accept-Language" in response["Vary"]
    assert "Chat with an open model" in client.get(reverse("home")).content.decode()  # no header: English


def test_the_switch_sets_a_cookie_that_beats_accept_language_and_keeps_the_page(client):
    response = client.post(reverse("set-language"), {"language": "en", "next": "/pricing/"}, **ZH)
    assert response.status_code == 302 and response["Location"] == "/pricing/"
    assert response.cookies["levee_language"].value == "en"
    assert "Chat with an open model" in client.get(reverse("home"), **ZH).content.decode()
    # Elsewhere than this site, or a language we do not have: ignored.
    response = client.post(reverse("set-language"), {"language": "xx", "next": "https://evil.example/"})
    assert response["Location"] == "/" and client.cookies["levee_language"].value == "en"


def test_the_switch_saves_the_accounts_preference_and_log_in_brings_it_back(client):
    user = ada()
    client.force_login(user)
    client.post(reverse("set-language"), {"language": "zh-hans", "next": "/"})
    user.refresh_from_db()
    assert user.language == "zh-hans"
    # A new browser (no cookie, an English Accept-Language): logging in restores the preference.
    from django.test import Client

    fresh = Client()
    response = fresh.post(reverse("login"), {"username": user.email, "password": PASSWORD},
                          HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 302 and response.cookies["levee_language"].value == "zh-hans"
    assert "用量" in fresh.get(reverse("usage-page"), HTTP_ACCEPT_LANGUAGE="en").content.decode()


def test_sign_up_mails_in_the_page_language_and_remembers_it(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("signup"), {"email": "li@example.com", "password": PASSWORD}, **ZH)
    assert User.objects.get(email="li@example.com").language == "zh-hans"
    assert mail.outbox[0].subject == "验证你的 Levee 账户" and "请打开以下链接确认" in mail.outbox[0].body
    # Someone signs up again with the address, from an English browser: the owner reads Chinese.
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("signup"), {"email": "li@example.com", "password": PASSWORD}, HTTP_ACCEPT_LANGUAGE="en")
    assert mail.outbox[1].subject == "有人尝试用你的邮箱地址注册"


def test_password_reset_mails_in_the_accounts_language(client, django_capture_on_commit_callbacks):
    make_user("wang@example.com")
    User.objects.filter(email="wang@example.com").update(language="zh-hans")
    client.post(reverse("password_reset"), {"email": "wang@example.com"}, HTTP_ACCEPT_LANGUAGE="en")
    assert mail.outbox[0].subject == "重置你的 Levee 密码" and "请在这里设置新密码" in mail.outbox[0].body


def test_form_errors_are_translated(client):
    response = client.post(reverse("signup"), {"email": "not-an-address", "password": "short"}, **ZH)
    page = response.content.decode()
    assert response.status_code == 400 and "请输入有效的电子邮件地址。" in page
    login = client.post(reverse("login"), {"username": "nobody@example.com", "password": "wrong"}, **ZH)
    assert "邮箱与密码不匹配任何账户。" in login.content.decode()


def test_the_api_answers_in_english_whatever_the_browser_says(client):
    assert client.get("/v1/models", **ZH).json()["error"]["message"].isascii()
    unauth = client.get(reverse("api-keys"), **ZH)
    assert unauth.status_code in (401, 403) and unauth.json()["error"]["message"].isascii()
    chat = client.get(reverse("chat-api-search"), {"q": "x"}, **ZH)
    assert chat.status_code == 401 and chat.json()["error"]["message"] == "Log in to chat."
    assert client.get("/v1/nowhere", **ZH).json()["error"]["message"].isascii()


def test_the_javascript_catalog_follows_the_page_language(client):
    import json

    word = json.dumps("复制代码")  # the catalog is JSON inside the script, non-ASCII escaped
    assert word in client.get(reverse("javascript-catalog"), **ZH).content.decode()
    assert word not in client.get(reverse("javascript-catalog")).content.decode()


def test_numbers_and_dates_follow_the_language(client):
    user = ada()
    client.force_login(user)
    now = timezone.now()
    record_free_usage(user=user, model="deepseek-chat", request_id="r", prompt_cache_hit_tokens=0,
                      prompt_cache_miss_tokens=1200, completion_tokens=34, started_at=now, finished_at=now)
    from levee.billing import services as billing

    billing.topup(billing.wallet_for(user), 10**9, source="test", external_id="t1")
    zh = client.get(reverse("usage-page"), **ZH).content.decode()
    en = client.get(reverse("usage-page")).content.decode()
    assert "<td>1,234</td>" in zh and "<td>1,234</td>" in en
    assert "共 1,234 个 token" in zh and "1,234 tokens" in en
    assert f"{now.year}年" in zh and f"{now:%Y-%m-%d}" in en


def test_money_keeps_its_exact_digits_and_takes_the_languages_separators():
    from django.utils import translation

    from levee.billing.money import localized

    big = 1_234_567_891_234_567  # 1,234,567.891234567 units: past a float's 15–16 significant digits
    for language in ("en", "zh-hans"):
        with translation.override(language):
            assert localized(big, places=9) == "1,234,567.891234567"
            assert localized(1_999_999_999) == "1.99"  # truncated, as format_amount: never more than there is
            assert localized(-1_234_500_000_000) == "-1,234.50" and localized(0) == "0.00"
            assert localized("0.035") == "0.035" and localized("1234.5") == "1,234.5"
    with translation.override("de"):  # the formats come from Django's l10n, not from this code
        assert localized(big, places=9) == "1.234.567,891234567"


def test_money_and_dates_on_the_pages_and_in_mail_follow_the_language(client, redis_client,
                                                                      django_capture_on_commit_callbacks):
    import time
    from datetime import UTC, timedelta

    from inference import protocol
    from levee.billing import alerts
    from levee.billing import services as billing
    from levee.billing.models import LedgerEntry
    from tests.platform.billing.conftest import make_prices

    make_prices("deepseek-chat", hit=1_234_500, miss=28, out=420, at=timezone.now() - timedelta(minutes=1))
    redis_client.zadd(protocol.workers_key("deepseek-chat"), {"w1": time.time()})  # served: the price list shows it
    user = ada()
    client.force_login(user)
    billing.topup(billing.wallet_for(user), 10**15, source="test", external_id="big")  # one operation's most
    billing.topup(billing.wallet_for(user), 234_567_500_000_000, source="test", external_id="rest")
    at = LedgerEntry.objects.filter(wallet__user=user).latest("id").created_at.astimezone(UTC)
    zh = client.get(reverse("usage-page"), **ZH).content.decode()
    en = client.get(reverse("usage-page")).content.decode()
    for page in (zh, en):
        assert '<p class="card-value" id="balance-total">1,234,567.50 USD</p>' in page
        assert "<td>234,567.500000</td>" in page  # the ledger's six places
    assert f"<td>{at.year}年{at.month}月{at.day}日 {at:%H:%M}</td>" in zh and f"<td>{at:%Y-%m-%d %H:%M:%S}</td>" in en
    for page in (client.get(reverse("home"), **ZH).content.decode(), client.get(reverse("pricing")).content.decode()):
        assert "<td>1,234.50</td>" in page

    # Mail goes out in the account's language, amounts grouped the same way.
    User.objects.filter(pk=user.pk).update(language="zh-hans")
    user.refresh_from_db()
    alerts.configure(user, low_balance_nano=10**15, daily_spend_nano=None, daily_digest=False,
                     webhook_url="", actor=user, source="test")
    with django_capture_on_commit_callbacks(execute=True):
        billing.adjust(billing.wallet_for(user), -234_567_500_000_001, actor=None, reason="spent", source="test")
    sent = [m for m in mail.outbox if "余额" in m.subject]
    assert sent and sent[0].subject == "Levee：你的余额已低于 1,000,000.00 USD"
    assert "你的可用余额为 999,999.99 USD" in sent[0].body


# --- completeness: no English left on a Chinese page ---------------------------------------------

# Words that stay as they are in Chinese text: names, formats, keys, units.
KEEP = {"levee", "api", "json", "markdown", "deepseek", "openai", "token", "usd", "utc", "enter", "shift",
        "ctrl", "esc", "mac", "mixture", "moe", "chat", "reasoner", "pricing", "english", "http", "https",
        "example", "email", "com", "null", "csv", "post", "webhook", "stripe", "hmac", "sha"}


class _Text(HTMLParser):
    """Visible text and the attributes people read (placeholders, labels, titles), outside code."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "code", "pre", "option"):
            self.skip += 1
        for name, value in attrs:
            if name in ("placeholder", "aria-label", "title", "alt") and value:
                self.parts.append(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style", "code", "pre", "option") and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def english_words(html: str) -> set[str]:
    parser = _Text()
    parser.feed(html)
    text = " ".join(parser.parts)
    text = re.sub(r"\S+@\S+|[\w.-]+://\S+|deepseek-[\w-]+|sk-\S*", " ", text)
    return {w for w in re.findall(r"[A-Za-z]{3,}", text) if w.lower() not in KEEP}


def test_no_english_is_left_on_any_chinese_page(client):
    user = ada()
    conversation = Conversation.objects.create(user=user, model="deepseek-chat", title="你好")
    Message.objects.create(conversation=conversation, role="user", content="你好")
    pages = [reverse("home"), reverse("pricing"), reverse("login"), reverse("signup"), reverse("signup-sent"),
             reverse("password_reset"), reverse("password_reset_done"), "/no/such/page/"]
    signed_in = [reverse("usage-page"), reverse("keys-page"), reverse("chat"),
                 reverse("chat-conversation", args=[conversation.pk])]
    left = {}
    for path in pages:
        left[path] = english_words(client.get(path, **ZH).content.decode())
    client.force_login(user)
    for path in signed_in:
        left[path] = english_words(client.get(path, **ZH).content.decode())
    assert {path: words for path, words in left.items() if words} == {}


def test_no_english_is_left_on_the_doors_and_their_messages(client, monkeypatch):
    """The pages and messages that came with the shield's doors and with top-ups and caps."""
    from django.contrib.auth.tokens import default_token_generator
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    from levee.accounts.services import verification_token
    from levee.keys.services import create_api_key

    left = {}
    newcomer = make_user("new@example.com", verified=False)
    verify = reverse("verify-email", args=[verification_token(newcomer)])
    left["verify (GET)"] = english_words(client.get(verify, **ZH).content.decode())
    left["verify (bad link)"] = english_words(client.get(reverse("verify-email", args=["nonsense"]), **ZH).content.decode())
    unverified = client.post(reverse("login"), {"username": "new@example.com", "password": PASSWORD}, **ZH)
    assert "请先确认你的邮箱地址" in unverified.content.decode()
    left["login (unverified)"] = english_words(unverified.content.decode())
    left["verify (POST)"] = english_words(client.post(verify, **ZH).content.decode())
    monkeypatch.setattr("levee.shield.mail.may_mail", lambda email: False)
    capped = client.post(reverse("signup"), {"email": "li@example.com", "password": PASSWORD}, **ZH)
    assert "今天发往这个地址的邮件已达上限" in capped.content.decode()
    left["signup (mail capped)"] = english_words(capped.content.decode())

    user = ada()
    create_api_key(user, name="旧钥")
    reset = reverse("password_reset_confirm", args=[urlsafe_base64_encode(force_bytes(user.pk)),
                                                    default_token_generator.make_token(user)])
    form = client.get(reset, follow=True, **ZH)
    left["reset (form)"] = english_words(form.content.decode())
    done = client.post(form.redirect_chain[-1][0], {"new_password1": "a new Pa55word!", "new_password2": "a new Pa55word!"},
                       follow=True, **ZH)
    assert "随旧密码一起吊销了 1 个 API 密钥" in done.content.decode()
    left["reset (complete)"] = english_words(done.content.decode())
    left["reset (used link)"] = english_words(client.get(reset, follow=True, **ZH).content.decode())

    user.refresh_from_db()  # the reset changed the password (and so the session's hash)
    client.force_login(user)
    key, _ = create_api_key(user, name="台式机")
    saved = client.post(reverse("keys-page"), {"key_id": key.pk, "daily_cap": "1234.5", "monthly_cap": "", "lifetime_cap": ""},
                        follow=True, **ZH)
    assert "台式机 的消费上限已保存：每日 1,234.50，每月 无，累计 无。" in saved.content.decode()
    left["keys (caps saved)"] = english_words(saved.content.decode())
    wrong = client.post(reverse("keys-page"), {"key_id": key.pk, "daily_cap": "lots", "monthly_cap": "0"},
                        follow=True, **ZH)
    assert "每日，每月：请输入一个正数金额" in wrong.content.decode()
    left["keys (caps refused)"] = english_words(wrong.content.decode())
    for amount in ("lots", "3.001", "1000000"):
        refused = client.post(reverse("topup-start"), {"custom_amount": amount}, follow=True, **ZH)
        left[f"top-up ({amount})"] = english_words(refused.content.decode())
    assert "金额必须在" in refused.content.decode()
    alerts = client.post(reverse("alerts-form"), {"low_balance": "x", "webhook_url": ""}, follow=True, **ZH)
    left["alerts (refused)"] = english_words(alerts.content.decode())
    assert {where: words for where, words in left.items() if words} == {}


def test_the_pricing_pages_discounts_and_next_change_are_in_chinese(client, redis_client):
    import time
    from datetime import time as clock
    from datetime import timedelta

    from inference import protocol
    from levee.billing.models import DiscountWindow, TokenClass
    from tests.platform.billing.conftest import make_prices

    now = timezone.now()
    redis_client.zadd(protocol.workers_key("deepseek-chat"), {"w1": time.time()})
    make_prices("deepseek-chat", at=now + timedelta(days=3))  # the next change
    DiscountWindow.objects.create(model="deepseek-chat", token_class=TokenClass.INPUT_CACHE_MISS, percent_off=50,
                                  start_time=clock(16, 30), end_time=clock(0, 30), weekdays="12345",
                                  effective_from=now - timedelta(days=1), effective_until=now + timedelta(days=30))
    zh = client.get(reverse("pricing"), **ZH).content.decode()
    assert "输入（缓存未命中）" in zh and "星期一至星期五" in zh and f"{now.year}年" in zh
    assert english_words(zh) == set()
    en = client.get(reverse("pricing")).content.decode()
    assert "input, cache miss" in en and "on Mon–Fri" in en
    assert client.get("/api/pricing", **ZH).json()["discount_windows"][0]["days"] == "Mon–Fri"  # the API: English


def test_the_catalogs_are_complete_and_compile():
    from pathlib import Path

    from ops.compile_messages import parse_po

    for po in Path("platform/locale/zh_Hans/LC_MESSAGES").glob("*.po"):
        text = po.read_text(encoding="utf-8")
        assert "#, fuzzy" not in text, f"{po}: fuzzy entries are not compiled"
        entries = re.findall(r'^msgid "', text, flags=re.M)
        assert len(parse_po(text, str(po))) == len(entries), f"{po}: an entry has no translation"


def test_the_admin_speaks_chinese_too(client):
    from tests.personas import root

    client.force_login(root())
    page = client.get("/admin/", **ZH).content.decode()
    assert '<html lang="zh-hans"' in page and "运维" in page and "实时仪表盘" in page  # ours
    assert "最近动作" in page or "修改" in page  # Django's own labels, from its zh_Hans catalog
    assert "Levee 管理后台" in page and "Django" not in page.split("<body", 1)[1].split("</header>", 1)[0]
    assert "Levee administration" in client.get("/admin/").content.decode()  # and in English


def test_the_admins_own_labels_are_chinese(client):
    """Our models' names, their fields' names, choices, actions and filters, not only Django's words."""
    from levee.billing import services as billing
    from levee.keys.services import create_api_key
    from tests.personas import root

    owner = ada()
    create_api_key(owner, name="笔记本")
    billing.topup(billing.wallet_for(owner), 10**9, source="test", external_id="admin-zh")
    client.force_login(root())
    index = client.get("/admin/", **ZH).content.decode()
    assert "API 密钥" in index and "账目明细" in index and "防护模式" in index and "用量记录" in index
    keys = client.get("/admin/keys/apikey/", **ZH).content.decode()
    assert "最近使用时间" in keys and "吊销时间" in keys  # column headers: the fields' verbose names
    assert "吊销所选密钥" in keys  # the action
    ledger = client.get("/admin/billing/ledgerentry/", **ZH).content.decode()
    assert "赠送余额变动" in ledger and "类型" in ledger
    wallets = client.get("/admin/billing/wallet/", **ZH).content.decode()
    assert "为所选钱包加款或扣款" in wallets and "充值余额" in wallets
    english = client.get("/admin/keys/apikey/").content.decode()
    assert "Last used at" in english and "Revoke selected keys" in english  # English stays as it was
