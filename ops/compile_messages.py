"""Compile gettext catalogs (.po → .mo) with the standard library alone: `make run`, `make test` and
the image build run it, so no machine needs GNU gettext's msgfmt.

    python ops/compile_messages.py [FILE.po ...]     # default: every platform/locale/*/LC_MESSAGES/*.po

A .mo is rewritten only when older than its .po. Fuzzy entries and untranslated ones are left out, as
msgfmt leaves them out; a malformed .po is an error naming the file and line.
"""
from __future__ import annotations

import ast
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCALE = ROOT / "platform" / "locale"


class PoError(ValueError):
    pass


def _string(token: str, where: str) -> str:
    token = token.strip()
    if not (len(token) >= 2 and token[0] == token[-1] == '"'):
        raise PoError(f"{where}: expected a quoted string, got {token[:40]!r}")
    try:
        return ast.literal_eval(token)  # C-style escapes (\n, \t, \", \\) read as Python's
    except (SyntaxError, ValueError) as exc:
        raise PoError(f"{where}: bad string {token[:40]!r}") from exc


def parse_po(text: str, name: str = "<po>") -> dict[str, str]:
    """The catalog of a .po file as .mo keys → values: `ctxt\\x04id`, `id\\x00plural` → forms joined by NUL."""
    entries: dict[str, str] = {}
    entry: dict[str, str] = {}
    fuzzy = False
    field = None

    def flush() -> None:
        nonlocal entry, fuzzy, field
        if "msgid" in entry:
            key = entry["msgid"]
            if "msgid_plural" in entry:
                key += "\0" + entry["msgid_plural"]
                forms = [entry[k] for k in sorted((k for k in entry if k.startswith("msgstr[")),
                                                  key=lambda k: int(k[7:-1]))]
                value = "\0".join(forms)
                translated = bool(forms) and all(forms)
            else:
                value = entry.get("msgstr", "")
                translated = bool(value)
            if "msgctxt" in entry:
                key = entry["msgctxt"] + "\x04" + key
            if translated and (not fuzzy or key == ""):
                entries[key] = value
        entry, fuzzy, field = {}, False, None

    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        line = raw.strip()
        if not line:
            flush()
            continue
        if line.startswith("#"):
            if line.startswith("#,") and "fuzzy" in line:
                if "msgid" in entry:
                    flush()
                fuzzy = True
            continue
        if line.startswith('"'):
            if field is None:
                raise PoError(f"{where}: a continuation line with nothing to continue")
            entry[field] += _string(line, where)
            continue
        keyword, _, rest = line.partition(" ")
        if keyword in ("msgctxt", "msgid") and "msgid" in entry:  # the next entry, with no blank line between
            flush()
        if keyword not in {"msgctxt", "msgid", "msgid_plural", "msgstr"} and not keyword.startswith("msgstr["):
            raise PoError(f"{where}: unknown keyword {keyword[:20]!r}")
        field = keyword
        entry[field] = _string(rest, where)
    flush()
    return entries


def mo_bytes(catalog: dict[str, str]) -> bytes:
    """GNU .mo bytes (little-endian, revision 0, no hash table) for keys → values."""
    keys = sorted(catalog, key=lambda k: k.encode())
    ids = [k.encode() for k in keys]
    strs = [catalog[k].encode() for k in keys]
    n = len(keys)
    header_size = 7 * 4
    originals_at = header_size
    translations_at = originals_at + 8 * n
    data_at = translations_at + 8 * n
    table_o, table_t, blob = [], [], b""
    for s in ids:
        table_o.append((len(s), data_at + len(blob)))
        blob += s + b"\0"
    for s in strs:
        table_t.append((len(s), data_at + len(blob)))
        blob += s + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, n, originals_at, translations_at, 0, data_at)
    out += b"".join(struct.pack("<2I", *pair) for pair in table_o)
    out += b"".join(struct.pack("<2I", *pair) for pair in table_t)
    return out + blob


def compile_file(po: Path, *, force: bool = False) -> bool:
    """Write po's .mo beside it if missing or older; True if written."""
    mo = po.with_suffix(".mo")
    if not force and mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
        return False
    catalog = parse_po(po.read_text(encoding="utf-8"), str(po))
    if "" not in catalog:
        raise PoError(f"{po}: no header entry (msgid \"\") with the charset and plural forms")
    tmp = mo.with_suffix(".mo.tmp")
    tmp.write_bytes(mo_bytes(catalog))
    tmp.replace(mo)
    return True


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted(LOCALE.glob("*/LC_MESSAGES/*.po"))
    try:
        written = [po for po in files if compile_file(po)]
    except (PoError, OSError) as exc:
        print(f"compile_messages: {exc}", file=sys.stderr)
        return 1
    for po in written:
        print(f"compiled {po.relative_to(ROOT) if po.is_relative_to(ROOT) else po}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
