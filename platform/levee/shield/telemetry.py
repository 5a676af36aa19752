"""Counters the shield reports to the platform's metrics (levee.core.metrics, where present).

Label values come from small fixed sets (rule names like `api.key.requests`, outcomes)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from levee.shield.limiter import Outcome

_count_decision: Callable[[str, str], None] | None
_count_signup: Callable[[str], None] | None
try:
    from levee.core.metrics import count_limiter_decision as _count_decision
    from levee.core.metrics import count_signup as _count_signup
except ImportError:  # metrics not installed
    _count_decision = _count_signup = None

counting = _count_decision is not None


def rule_decided(label: str, allowed: bool) -> None:
    """label: "<subject kind>.<rule name>", e.g. `api.key.requests`."""
    if _count_decision is not None:
        _count_decision(label, "allowed" if allowed else "limited")


def limiter_outcomes(outcomes: Iterable[Outcome]) -> None:
    for o in outcomes:
        rule_decided(f"{o.subject.key().split(':', 1)[0]}.{o.rule.name}", o.allowed)


def signup_refused(outcome: str) -> None:
    """outcome: busy, rate_limited, proof_of_work, honeypot, unavailable."""
    if _count_signup is not None:
        _count_signup(outcome)
