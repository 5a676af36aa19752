"""The web processes' gunicorn worker: uvicorn's, less two things Levee does not want from it.

- Proxy headers: uvicorn rewrites the client address and scheme from X-Forwarded-For/-Proto for
  peers in gunicorn's FORWARDED_ALLOW_IPS (127.0.0.1 by default), a second and separately configured
  notion of which proxies to believe. Levee reads those headers itself, from TRUSTED_PROXY_CIDRS only
  (levee.core.net), so uvicorn's rewrite is off: a local peer cannot claim another address unless the
  operator has named it a proxy. It also took a few per cent of a refusal's CPU (an address parse per
  request) in the admission benchmark.
- The `server: uvicorn` header: it tells a scanner which server to try.

And one choice made explicit: the httptools protocol (uvicorn[standard] installs it; "auto" picks it
when present). The admission layer relies on what it does with a body the application answered
without reading — on a kept-alive connection it parses and discards the rest, so a configured proxy
sending a buffered body gets the layer's answer, not a closed connection (levee.shield.admission).
"""
from __future__ import annotations

from typing import Any

from uvicorn.workers import UvicornWorker


class LeveeWorker(UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "http": "httptools",
                                     "proxy_headers": False, "server_header": False}
