"""Who pays, for the shield's shedding order (levee.shield.api asks): an account with topped-up money is
paid API traffic, shed last; one living on granted (free) credit is free-tier API traffic."""
from __future__ import annotations

from typing import TYPE_CHECKING

from levee.billing.models import Wallet

if TYPE_CHECKING:
    from levee.accounts.models import User
    from levee.keys.models import ApiKey


def api_tier(user: User, api_key: ApiKey) -> str:
    topped_up = Wallet.objects.filter(user=user).values_list("topped_up_nano", flat=True).first() or 0
    return "paid_api" if topped_up > 0 else "free_api"
