"""Escalation in seconds (levee.shield.escalation): the decision on sliding windows against floors
and the recent baseline, the per-second windows themselves, and the one-leader-per-beat loop."""
import pytest

from levee.shield import escalation, stats
from levee.shield.models import ModeChange

pytestmark = pytest.mark.django_db


@pytest.fixture
def floors(settings):
    settings.SHIELD_ESCALATION_FLOORS = {
        "elevated": {"signup": 100, "failed_login": 50, "refused": 100, "challenged": 100, "lag_ms": 500},
        "under_attack": {"failed_login": 300, "refused": 400, "lag_ms": 2000}}
    settings.SHIELD_ESCALATION_BASELINE_FACTOR = 5
    settings.SHIELD_ESCALATION_WINDOW = 10


def test_a_signal_needs_its_floor_and_a_jump_over_the_baseline(floors):
    calm = {"signup": (20, 3.0), "failed_login": (10, 2.0), "refused": (30, 5.0)}
    assert escalation.hot_signals(calm, 0, "normal") == {}
    flood = {**calm, "refused": (450, 5.0)}
    hot = escalation.hot_signals(flood, 0, "normal")
    assert escalation.wanted_mode(hot) == "under_attack" and "450 refused" in hot["under_attack"][0]
    # a busy site whose baseline is already high needs more than the floor to move
    busy = {**calm, "failed_login": (120, 40.0)}
    assert escalation.wanted_mode(escalation.hot_signals(busy, 0, "normal")) == "normal"
    # ... but once in a mode, the floor alone holds it (the baseline catches up with a long attack)
    assert escalation.wanted_mode(escalation.hot_signals(busy, 0, "elevated")) == "elevated"


def test_cpu_pressure_alone_can_raise_the_mode(floors):
    assert escalation.wanted_mode(escalation.hot_signals({}, 700, "normal")) == "elevated"
    assert escalation.wanted_mode(escalation.hot_signals({}, 2500, "normal")) == "under_attack"


def test_a_launch_day_spike_of_sign_ups_stops_at_elevated(floors):
    """Many new browsers at once: sign-ups, and the new-browser budget spent (challenges), not refusals."""
    spike = {"signup": (5000, 1.0), "failed_login": (3, 1.0), "refused": (10, 1.0), "challenged": (20000, 2.0)}
    assert escalation.wanted_mode(escalation.hot_signals(spike, 0, "normal")) == "elevated"


def test_the_window_is_the_last_ten_seconds_by_redis_clock(floors):
    for _ in range(7):
        stats.count("failed_login")
    windows = stats.windows(["failed_login", "signup"], window=10, baseline=600)
    assert windows["failed_login"][0] == 7 and windows["signup"] == (0, 0.0)


def test_an_evaluation_raises_and_audits_within_one_beat(floors, settings):
    settings.SHIELD_ESCALATION_FLOORS["under_attack"]["failed_login"] = 30
    for _ in range(30):
        stats.count("failed_login")
    assert escalation.evaluate() == "under_attack"
    change = ModeChange.objects.get()
    assert change.source == "automatic" and change.from_mode == "normal" and "30 failed login" in change.reason


def test_only_one_process_per_beat_evaluates(floors, monkeypatch):
    calls = []
    monkeypatch.setattr(escalation, "evaluate", lambda: calls.append(1))
    escalation.tick(0.0)
    monkeypatch.setattr(escalation, "_ME", "another-host:1")
    escalation.tick(0.0)  # the lease is held by the first
    assert calls == [1]


def test_the_worst_sustained_lag_of_any_process_is_what_counts(floors, monkeypatch):
    import time

    from levee.shield import store

    monkeypatch.setattr(escalation, "_recent_lags", [])
    escalation.tick(5000.0)  # one pause is not pressure
    assert escalation._worst_lag(store.client(), time.time()) == 0.0
    escalation.tick(900.0)
    escalation.tick(1200.0)
    assert escalation._worst_lag(store.client(), time.time()) == 900.0
    monkeypatch.setattr(escalation, "_ME", "another-host:2")
    monkeypatch.setattr(escalation, "_recent_lags", [])
    for _ in range(3):
        escalation.tick(10.0)
    assert escalation._worst_lag(store.client(), time.time()) == 900.0
