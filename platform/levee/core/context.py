"""Display preferences read from cookies, for base.html: the colour scheme (theme.js sets it)."""
from __future__ import annotations

from django.http import HttpRequest

THEME_COOKIE = "levee_theme"
THEMES = ("light", "dark")  # anything else (or none) follows the browser's prefers-color-scheme


def preferences(request: HttpRequest) -> dict:
    """`theme`: "light", "dark", or "" (follow the system)."""
    theme = request.COOKIES.get(THEME_COOKIE, "")
    return {"theme": theme if theme in THEMES else ""}
