"""mypy with a baseline: fails on any error that is not in .mypy-baseline.txt.

The platform was half annotated when type checking was switched on. Rather than silence whole
modules, every error mypy reports today is listed in the baseline (path, error code and message;
no line numbers, so edits that move code do not churn it). A change that adds an error — an
unannotated new function, a wrong type — fails `make lint`; a change that fixes some shrinks the
baseline with `--update`. Usage:

    python ops/lint/mypy_gate.py [--update] [mypy targets...]
"""
from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / ".mypy-baseline.txt"
TARGETS = ["platform/levee", "inference", "kernels"]
_LINE = re.compile(r"^(?P<path>[^:\s]+\.py):\d+(?::\d+)?: error: (?P<message>.*?)\s+\[(?P<code>[a-z-]+)\]$")


def entries(output: str) -> collections.Counter[str]:
    """mypy's error lines as 'path [code] message', counted (the same error may stand twice in a file)."""
    found: collections.Counter[str] = collections.Counter()
    for line in output.splitlines():
        match = _LINE.match(line.strip())
        if match:
            found[f"{match['path']} [{match['code']}] {match['message']}"] += 1
    return found


def read_baseline() -> collections.Counter[str]:
    if not BASELINE.exists():
        return collections.Counter()
    lines = [line for line in BASELINE.read_text().splitlines() if line and not line.startswith("#")]
    return collections.Counter(lines)


def main(argv: list[str]) -> int:
    update = "--update" in argv
    targets = [a for a in argv if a != "--update"] or TARGETS
    proc = subprocess.run([sys.executable, "-m", "mypy", *targets], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1) or "error: " in proc.stderr:
        sys.stderr.write(proc.stdout + proc.stderr)
        return 2  # mypy itself failed (a config or crash), not a type error
    now = entries(proc.stdout)
    if update:
        lines = sorted(now.elements())
        BASELINE.write_text("# mypy errors accepted when type checking was switched on; only ever shrinks.\n"
                            "# Regenerate with: python ops/lint/mypy_gate.py --update\n" + "\n".join(lines) + "\n")
        print(f"mypy baseline: {len(lines)} entries written to {BASELINE.name}")
        return 0
    base = read_baseline()
    new = now - base
    fixed = base - now
    if new:
        print("mypy: errors beyond the baseline (annotate new code; see ops/lint/mypy_gate.py).")
        for key, extra in sorted(new.items()):
            print(f"  {extra} more of: {key} (baseline {base[key]}, now {now[key]}); where it occurs:")
            for line in proc.stdout.splitlines():
                match = _LINE.match(line.strip())
                if match and f"{match['path']} [{match['code']}] {match['message']}" == key:
                    print("    " + line.strip())
        return 1
    print(f"mypy: no new errors ({sum(base.values())} in the baseline"
          + (f", {sum(fixed.values())} of them fixed: run with --update to shrink it)" if fixed else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
