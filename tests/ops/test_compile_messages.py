"""ops/compile_messages.py: .po → .mo with the standard library, read back by Python's gettext."""
import gettext
import os

import pytest

from ops.compile_messages import PoError, compile_file, main, mo_bytes, parse_po

PO = r'''# a comment
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=1; plural=0;\n"

msgid "Hello"
msgstr "你好"

#, python-format
msgid "Line one\n"
"and \"two\""
msgstr "第一行\n"
"和“二”"

msgctxt "colour scheme"
msgid "Auto"
msgstr "跟随系统"

msgid "%(n)s day"
msgid_plural "%(n)s days"
msgstr[0] "%(n)s 天"

#, fuzzy
msgid "Unsure"
msgstr "不确定"

msgid "Untranslated"
msgstr ""
'''


def test_a_catalog_compiles_and_reads_back_with_gettext(tmp_path):
    po = tmp_path / "django.po"
    po.write_text(PO, encoding="utf-8")
    assert compile_file(po)
    with open(po.with_suffix(".mo"), "rb") as f:
        t = gettext.GNUTranslations(f)
    assert t.gettext("Hello") == "你好"
    assert t.gettext('Line one\nand "two"') == "第一行\n和“二”"
    assert t.pgettext("colour scheme", "Auto") == "跟随系统" and t.gettext("Auto") == "Auto"
    assert t.ngettext("%(n)s day", "%(n)s days", 5) == "%(n)s 天"
    assert t.gettext("Unsure") == "Unsure" and t.gettext("Untranslated") == "Untranslated"  # left out
    assert not compile_file(po)  # up to date: not rewritten


def test_the_projects_catalogs_compile_like_msgfmt_would(tmp_path):
    from pathlib import Path

    for po in Path("platform/locale").glob("*/LC_MESSAGES/*.po"):
        catalog = parse_po(po.read_text(encoding="utf-8"), str(po))
        path = tmp_path / (po.stem + ".mo")
        path.write_bytes(mo_bytes(catalog))
        with open(path, "rb") as f:
            t = gettext.GNUTranslations(f)
        assert t.info()["plural-forms"] == "nplurals=1; plural=0;"
        assert len(t._catalog) == len(catalog)


@pytest.mark.parametrize("bad", ['msgid "a"\nmsgstr "b', 'msgid "a"\nmsgstr b', '"orphan"', 'msgfoo "x"'])
def test_a_malformed_catalog_is_an_error_naming_the_line(tmp_path, bad):
    with pytest.raises(PoError, match=r"x\.po:\d+"):
        parse_po(bad, "x.po")
    po = tmp_path / "broken.po"
    po.write_text(bad)
    assert main([str(po)]) == 1


def test_a_catalog_without_its_header_is_refused(tmp_path):
    po = tmp_path / "django.po"
    po.write_text('msgid "a"\nmsgstr "b"\n')
    with pytest.raises(PoError, match="header"):
        compile_file(po)
    assert not po.with_suffix(".mo").exists()


def test_a_stale_mo_is_rewritten(tmp_path):
    po = tmp_path / "django.po"
    po.write_text(PO, encoding="utf-8")
    compile_file(po)
    mo = po.with_suffix(".mo")
    os.utime(mo, (0, 0))
    assert compile_file(po)
