"""Every string the code marks for translation has its Chinese: the msgids are found in the sources
as makemessages would find them (Python calls of the gettext family under any name they are
imported as, templates through Django's own templatize, the scripts' gettext calls), without GNU
gettext, and each must be translated in our catalog (or, for Django's own words, in Django's)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from django.utils import translation
from django.utils.translation.template import templatize

from ops.compile_messages import parse_po

PLATFORM = Path("platform")
LOCALE = PLATFORM / "locale" / "zh_Hans" / "LC_MESSAGES"
# The gettext family and where its arguments are: (context, singular, plural) positions.
FAMILY = {"gettext": (None, 0, None), "gettext_lazy": (None, 0, None), "gettext_noop": (None, 0, None),
          "ngettext": (None, 0, 1), "ngettext_lazy": (None, 0, 1), "pgettext": (0, 1, None),
          "pgettext_lazy": (0, 1, None), "npgettext": (0, 1, 2), "npgettext_lazy": (0, 1, 2)}


def _key(args: list[str], positions: tuple[int | None, int, int | None]) -> str:
    context, singular, plural = positions
    key = args[singular]
    if plural is not None:
        key += "\0" + args[plural]
    if context is not None:
        key = args[context] + "\x04" + key
    return key


def python_msgids(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = {"_": "gettext", **{name: name for name in FAMILY}}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "django.utils.translation":
            names.update({alias.asname or alias.name: alias.name for alias in node.names if alias.name in FAMILY})
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else (
            node.func.attr if isinstance(node.func, ast.Attribute) else None)
        if names.get(name or "") not in FAMILY:
            continue
        positions = FAMILY[names[name]]
        wanted = max(p for p in positions if p is not None) + 1
        args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None for a in node.args[:wanted]]
        if len(args) == wanted and None not in args:
            found.add(_key(args, positions))  # type: ignore[arg-type]
    return found


_STRING = r"""(?:u?'(?:[^'\\]|\\.)*'|u?"(?:[^"\\]|\\.)*")"""
_CALL = re.compile(rf"\b(n?p?gettext)\(\s*({_STRING}(?:\s*,\s*{_STRING})*)", re.S)


def _calls(code: str) -> set[str]:
    found = set()
    for name, args in _CALL.findall(code):
        values = list(ast.literal_eval(f"({args},)"))
        positions = FAMILY[name]
        if len(values) > max(p for p in positions if p is not None):
            found.add(_key(values, positions))
    return found


def template_msgids(path: Path) -> set[str]:
    return _calls(templatize(path.read_text(encoding="utf-8"), origin=str(path)))


def catalog(name: str) -> dict[str, str]:
    return parse_po((LOCALE / f"{name}.po").read_text(encoding="utf-8"), name)


def untranslated(msgids: dict[str, set[str]], ours: dict[str, str]) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    with translation.override("zh-hans"):
        for where, keys in msgids.items():
            for key in sorted(keys):
                if key in ours:
                    continue
                context, _, rest = key.rpartition("\x04")
                singular = rest.split("\0")[0]
                # Django's own words (its admin, its forms) come from its catalog.
                theirs = translation.pgettext(context, singular) if context else translation.gettext(singular)
                if theirs == singular:
                    missing.setdefault(where, []).append(rest.replace("\0", " | "))
    return missing


def test_every_marked_string_of_the_code_and_templates_is_translated():
    msgids = {str(p): python_msgids(p) for p in sorted((PLATFORM / "levee").rglob("*.py")) if "migrations" not in p.parts}
    msgids |= {str(p): template_msgids(p) for p in sorted((PLATFORM / "templates").rglob("*.html"))}
    msgids |= {str(p): template_msgids(p) for p in sorted((PLATFORM / "templates").rglob("*.txt"))}
    assert sum(map(len, msgids.values())) > 300  # the extraction finds them
    assert untranslated(msgids, catalog("django")) == {}


def test_every_marked_string_of_the_scripts_is_translated():
    scripts = [p for p in sorted((PLATFORM / "static" / "levee").glob("*.js"))]
    msgids = {str(p): _calls(p.read_text(encoding="utf-8")) for p in scripts}
    assert sum(map(len, msgids.values())) > 30
    assert untranslated(msgids, catalog("djangojs")) == {}


@pytest.mark.parametrize("source, expected", [
    ('from django.utils.translation import gettext_noop as N_\nN_("Hello")\nx = "not marked"', {"Hello"}),
    ('from django.utils import translation\ntranslation.ngettext("a day", "%(n)s days", n)', {"a day\0%(n)s days"}),
    ('from django.utils.translation import pgettext\npgettext("colour scheme", "Auto")\n_(f"{x}")',
     {"colour scheme\x04Auto"}),
])
def test_the_python_extraction_finds_what_makemessages_finds(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert python_msgids(path) == expected


def test_the_template_extraction_reads_translate_and_blocktranslate(tmp_path):
    path = tmp_path / "t.html"
    path.write_text('{% load i18n %}<p>{% translate "Log in" %}</p>{% blocktranslate count n=k %}{{ n }} key'
                    '{% plural %}{{ n }} keys{% endblocktranslate %}{% translate "Auto" context "colour scheme" %}'
                    "<p>Plain text</p>")
    assert template_msgids(path) == {"Log in", "%(n)s key\0%(n)s keys", "colour scheme\x04Auto"}
    assert untranslated({"t": {"Log in", "Not in any catalog"}}, catalog("django")) == {"t": ["Not in any catalog"]}
