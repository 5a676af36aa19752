from levee.shield import state


def mitigation(request):
    """`shield_mode` for the site banner (base.html)."""
    return {"shield_mode": state.current_mode()}
