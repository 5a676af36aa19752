import os
import time

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levee.settings")
_django = get_asgi_application()


async def application(scope, receive, send):
    # When the request reached the application, for the Server-Timing header (levee.core.timing).
    scope["levee.received"] = time.perf_counter()
    return await _django(scope, receive, send)
