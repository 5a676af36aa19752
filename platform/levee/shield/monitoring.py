"""The shield's state in /metrics and on the admin dashboard: the mitigation mode in force."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from levee.core.metrics import safely

MODES = ("normal", "elevated", "under_attack")


def current_mode() -> dict[str, Any] | None:
    """{"mode": "normal"|"elevated"|"under_attack", "set_by": str | None, "set_at": datetime | None,
    "reason": str, "pinned": bool}; None when it cannot be known."""
    from levee.shield.services import mode_details

    return mode_details()


def metric_families() -> Iterator[Metric]:
    mode = safely(current_mode)
    if mode is None:
        return
    gauge = GaugeMetricFamily("levee_mitigation_mode", "1 for the mitigation mode in force, 0 for the others.",
                              labels=["mode"])
    for name in MODES:
        gauge.add_metric([name], 1 if mode.get("mode") == name else 0)
    yield gauge


def dashboard_panel() -> dict[str, Any]:
    mode = current_mode()
    if mode is None:
        return {"mode": None, "note": "The mode cannot be read; the shield acts as in 'normal'."}
    return {key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in mode.items()}
