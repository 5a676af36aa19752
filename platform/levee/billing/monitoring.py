"""Billing's state in /metrics and on the admin dashboard: holds placed and not yet settled."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from levee.core.metrics import safely


def open_holds() -> int | None:
    """Billing holds not yet settled or released."""
    from levee.billing.models import Hold, HoldStatus

    return Hold.objects.filter(status=HoldStatus.OPEN).count()


def metric_families() -> Iterator[Metric]:
    holds = safely(open_holds)
    if holds is not None:
        yield GaugeMetricFamily("levee_open_holds", "Billing holds placed and not yet settled or released.",
                                value=holds)


def dashboard_panel() -> dict[str, Any]:
    return {"open_holds": open_holds()}
