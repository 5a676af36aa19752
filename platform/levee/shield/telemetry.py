"""Counters the shield reports to the platform's metrics (levee.core.metrics, where present).

The metrics module arrives on another branch; until it is merged these are no-ops, after it they
count. Label values come from small fixed sets (rule names like `api.key.requests`, outcomes)."""
from __future__ import annotations

try:
    from levee.core.metrics import count_limiter_decision as _count_decision
    from levee.core.metrics import count_signup as _count_signup
except ImportError:  # metrics not installed
    _count_decision = _count_signup = None


def limiter_outcomes(outcomes) -> None:
    if _count_decision is None:
        return
    for o in outcomes:
        _count_decision(f"{o.subject.key().split(':', 1)[0]}.{o.rule.name}", "allowed" if o.allowed else "refused")


def signup_refused(outcome: str) -> None:
    """outcome: busy, rate_limited, proof_of_work, honeypot, unavailable."""
    if _count_signup is not None:
        _count_signup(outcome)
