from django.http import HttpRequest

from levee.shield import state


def mitigation(request: HttpRequest) -> dict[str, str]:
    """`shield_mode` for the site banner (base.html)."""
    return {"shield_mode": state.current_mode()}
