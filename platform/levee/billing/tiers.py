"""Who pays, for the shield's shedding order (levee.shield.api asks): an account with topped-up money is
paid API traffic, shed last; one living on granted (free) credit is free-tier API traffic."""
from levee.billing.models import Wallet


def api_tier(user, api_key) -> str:
    topped_up = Wallet.objects.filter(user=user).values_list("topped_up_nano", flat=True).first() or 0
    return "paid_api" if topped_up > 0 else "free_api"
