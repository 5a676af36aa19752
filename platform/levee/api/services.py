"""Writes to the model catalogue."""
from __future__ import annotations

from django.db import transaction

from levee.api.models import LlmModel


class UnknownModels(ValueError):
    pass


def offer_models(names: list[str]) -> tuple[list[str], list[str]]:
    """Enable exactly the models named (the ones a worker serves) and disable the others, so /models,
    the home page and the price list offer what is served. Names must be in the catalogue. Returns
    (enabled, disabled) as changed by this call."""
    wanted = {n.strip() for n in names if n.strip()}
    with transaction.atomic():
        rows = list(LlmModel.objects.select_for_update().order_by("pk"))
        missing = wanted - {m.name for m in rows}
        if missing:
            raise UnknownModels(f"not in the catalogue: {', '.join(sorted(missing))}")
        enabled = [m.name for m in rows if m.name in wanted and not m.enabled]
        disabled = [m.name for m in rows if m.name not in wanted and m.enabled]
        LlmModel.objects.filter(name__in=enabled).update(enabled=True)
        LlmModel.objects.filter(name__in=disabled).update(enabled=False)
    return enabled, disabled
