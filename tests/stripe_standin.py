"""A local HTTP server that answers as Stripe's API does for the calls Levee makes, plus a minimal
hosted checkout page. Stripe cannot be reached from the test machines, so the tests run the real
`stripe` library against this (STRIPE_API_BASE=<its url>); it is the one stand-in the tests use.

Shapes follow Stripe's API reference: form-encoded requests with bracketed keys, JSON objects with
`id`/`object`, `{"error": {"type", "message", ...}}` on failure, `Idempotency-Key` replays. Webhook
events are signed with the library's own `stripe.WebhookSignature.generate_signature_header`.

    standin = StripeStandin(api_key="sk_test_…", webhook_secret="whsec_…", webhook_url=…).start()
    standin.url          # STRIPE_API_BASE
    standin.pay(session_id)                     # the checkout page's "pay": completes, sends the event
    standin.event("charge.refunded", {...})    # build an event; standin.signed(event) -> (body, header)
"""
from __future__ import annotations

import html
import json
import secrets
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlparse

API_VERSION = "2025-10-29.clover"


def _id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def parse_form(body: str) -> dict:
    """Stripe's form encoding (`a[b][0][c]=v`) back into nested dicts and lists."""
    root: dict = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node = root
        for here in parts[:-1]:
            child = node.get(here)
            if child is None:
                child = node[here] = {}
            node = child
        node[parts[-1]] = value

    def lists(node):
        if isinstance(node, dict):
            if node and all(k.isdigit() for k in node):
                return [lists(node[k]) for k in sorted(node, key=int)]
            return {k: lists(v) for k, v in node.items()}
        return node

    return lists(root)


class StripeStandin:
    def __init__(self, *, api_key: str, webhook_secret: str, webhook_url: str | None = None):
        self.api_key, self.webhook_secret, self.webhook_url = api_key, webhook_secret, webhook_url
        self.sessions: dict[str, dict] = {}
        self.idempotent: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.deliveries: list[tuple[str, int]] = []  # (event type, Levee's status)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> StripeStandin:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- the API -------------------------------------------------------------------------------

    def create_session(self, params: dict) -> dict:
        items = params.get("line_items") or []
        if params.get("mode") != "payment" or not items or not params.get("success_url"):
            raise _StripeError(400, "parameter_missing", "mode=payment, line_items and success_url are required")
        price = items[0].get("price_data") or {}
        try:
            unit, quantity = int(price["unit_amount"]), int(items[0].get("quantity", 1))
        except (KeyError, ValueError):
            raise _StripeError(400, "parameter_invalid_integer", "line_items[0][price_data][unit_amount] is required") from None
        sid = _id("cs")
        now = int(time.time())
        session = {
            "id": sid, "object": "checkout.session", "mode": "payment", "status": "open", "payment_status": "unpaid",
            "amount_subtotal": unit * quantity, "amount_total": unit * quantity,
            "currency": price.get("currency"), "client_reference_id": params.get("client_reference_id"),
            "customer_email": params.get("customer_email"), "metadata": params.get("metadata") or {},
            "payment_intent": None, "success_url": params["success_url"], "cancel_url": params.get("cancel_url"),
            "url": f"{self.url}/c/pay/{sid}", "created": now, "expires_at": now + 24 * 3600, "livemode": False,
            "_intent_metadata": (params.get("payment_intent_data") or {}).get("metadata") or {},
            "_product": (price.get("product_data") or {}).get("name", ""),
        }
        self.sessions[sid] = session
        return session

    @staticmethod
    def public(session: dict) -> dict:
        return {k: v for k, v in session.items() if not k.startswith("_")}

    # --- what Stripe's side does when the customer pays -----------------------------------------

    def complete(self, session_id: str) -> dict:
        """Mark the session paid (a PaymentIntent and a Charge made) and return its event."""
        session = self.sessions[session_id]
        session.update(status="complete", payment_status="paid", payment_intent=_id("pi"))
        session["_charge"] = _id("ch")
        return self.event("checkout.session.completed", self.public(session))

    def pay(self, session_id: str) -> dict:
        """The hosted page's "Pay": complete the session and deliver its signed event."""
        event = self.complete(session_id)
        self.deliver(event)
        return event

    def refund_event(self, session_id: str, amount_refunded: int) -> dict:
        """charge.refunded for the session's charge, with Stripe's running total refunded."""
        s = self.sessions[session_id]
        return self.event("charge.refunded", {
            "id": s["_charge"], "object": "charge", "amount": s["amount_total"], "amount_captured": s["amount_total"],
            "amount_refunded": amount_refunded, "refunded": amount_refunded >= s["amount_total"],
            "currency": s["currency"], "payment_intent": s["payment_intent"], "paid": True, "status": "succeeded",
            "metadata": s["_intent_metadata"]})

    def dispute_event(self, session_id: str, kind: str, amount: int, *, dispute_id: str | None = None,
                      status: str = "needs_response") -> dict:
        s = self.sessions[session_id]
        return self.event(kind, {
            "id": dispute_id or _id("dp"), "object": "dispute", "amount": amount, "currency": s["currency"],
            "charge": s["_charge"], "payment_intent": s["payment_intent"], "reason": "fraudulent", "status": status})

    def event(self, kind: str, obj: dict) -> dict:
        return {"id": _id("evt"), "object": "event", "api_version": API_VERSION, "created": int(time.time()),
                "type": kind, "livemode": False, "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None}, "data": {"object": obj}}

    def signed(self, event: dict, *, timestamp: int | None = None, secret: str | None = None) -> tuple[bytes, str]:
        """The body and Stripe-Signature header Stripe would send, signed by the stripe library."""
        import stripe

        body = json.dumps(event)
        header = stripe.WebhookSignature.generate_signature_header(body, secret or self.webhook_secret,
                                                                   timestamp=timestamp)
        return body.encode(), header

    def deliver(self, event: dict) -> int:
        body, header = self.signed(event)
        request = urllib.request.Request(self.webhook_url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        self.deliveries.append((event["type"], status))
        return status

    # --- HTTP ------------------------------------------------------------------------------------

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Request-Id", _id("req"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _html(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {standin.api_key}":
                    return True
                self._json(401, {"error": {"type": "invalid_request_error",
                                           "message": "Invalid API Key provided: " + (self.headers.get(
                                               "Authorization", "")[7:15] + "****")}})
                return False

            def do_GET(self):
                path = urlparse(self.path).path
                if path.startswith("/c/pay/"):
                    return self._page(path.rsplit("/", 1)[1])
                if path.startswith("/v1/checkout/sessions/"):
                    if not self._authorized():
                        return None
                    session = standin.sessions.get(path.rsplit("/", 1)[1])
                    if session is None:
                        return self._json(404, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                                                          "message": "No such checkout.session"}})
                    return self._json(200, standin.public(session))
                return self._json(404, {"error": {"type": "invalid_request_error", "message": "Unrecognized request URL"}})

            def do_POST(self):
                path = urlparse(self.path).path
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if path.startswith("/c/pay/"):
                    return self._pay(path.rsplit("/", 1)[1], dict(parse_qsl(raw)))
                if path != "/v1/checkout/sessions":
                    return self._json(404, {"error": {"type": "invalid_request_error",
                                                      "message": "Unrecognized request URL"}})
                if not self._authorized():
                    return None
                params = parse_form(raw)
                standin.requests.append(("POST", path, params))
                key = self.headers.get("Idempotency-Key")
                with standin.lock:
                    if key and key in standin.idempotent:
                        return self._json(200, standin.public(standin.idempotent[key]))
                    try:
                        session = standin.create_session(params)
                    except _StripeError as exc:
                        return self._json(exc.status, {"error": {"type": "invalid_request_error", "code": exc.code,
                                                                 "message": exc.message}})
                    if key:
                        standin.idempotent[key] = session
                return self._json(200, standin.public(session))

            def _page(self, sid: str) -> None:
                s = standin.sessions.get(sid)
                if s is None or s["status"] != "open":
                    return self._html(404, "<h1>This checkout session is not open</h1>")
                amount = f"{s['amount_total'] / 100:.2f} {str(s['currency']).upper()}"
                cancel = f'<a id="cancel" href="{html.escape(s["cancel_url"] or "/")}">Cancel</a>'
                return self._html(200, f"""<!doctype html><html lang="en"><head><title>Pay · Stripe stand-in</title></head>
<body><h1>Stripe stand-in checkout</h1><p id="product">{html.escape(s['_product'])}</p>
<p>Amount: <strong id="amount">{amount}</strong></p><p>Email: {html.escape(s['customer_email'] or '')}</p>
<form method="post"><label for="card">Card number</label> <input id="card" name="card" value="4242 4242 4242 4242">
<button type="submit" id="pay">Pay {amount}</button></form><p>{cancel}</p></body></html>""")

            def _pay(self, sid: str, form: dict) -> None:
                s = standin.sessions.get(sid)
                if s is None or s["status"] != "open":
                    return self._html(404, "<h1>This checkout session is not open</h1>")
                if form.get("card", "").replace(" ", "") != "4242424242424242":
                    return self._html(402, "<h1>Your card was declined.</h1>")
                standin.pay(sid)
                self.send_response(303)
                self.send_header("Location", s["success_url"].replace("{CHECKOUT_SESSION_ID}", sid))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None

        return Handler


class _StripeError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def main() -> None:
    """Serve the stand-in for trying top-ups by hand against `make run` (docs/billing.md)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhook", default="http://127.0.0.1:8000/billing/stripe/webhook",
                        help="Levee's webhook URL, where the checkout page's Pay sends the signed event")
    parser.add_argument("--api-key", default="sk_test_standin")
    parser.add_argument("--webhook-secret", default="whsec_standin")
    args = parser.parse_args()
    standin = StripeStandin(api_key=args.api_key, webhook_secret=args.webhook_secret, webhook_url=args.webhook)
    print(f"STRIPE_API_BASE={standin.url} STRIPE_SECRET_KEY={args.api_key} STRIPE_WEBHOOK_SECRET={args.webhook_secret}",
          flush=True)
    try:
        standin.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
