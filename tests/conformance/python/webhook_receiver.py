"""A webhook receiver that verifies fal webhooks the way fal's documentation describes, knowing
nothing of runmesh but the JWKS URL.

Verification (fal docs, "Verifying Your Webhook"): fetch the JWKS; read the X-Fal-Webhook-Request-Id,
-User-Id, -Timestamp and -Signature headers; reject timestamps more than 300 s away; the signed
message is request_id, user_id, timestamp and the hex SHA-256 of the raw body joined with newlines;
the signature is hex Ed25519; any key of the JWKS (its base64url `x`) that verifies it is a pass.
"""

import base64
import hashlib
import http.server
import json
import threading
import time
import urllib.request

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

TOLERANCE_S = 300


def fetch_jwks(jwks_url):
    with urllib.request.urlopen(jwks_url, timeout=10) as resp:
        return json.loads(resp.read())["keys"]


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify(jwks_url, headers, body):
    """True when the webhook's signature checks out against a key of the JWKS."""
    request_id = headers.get("x-fal-webhook-request-id")
    user_id = headers.get("x-fal-webhook-user-id")
    timestamp = headers.get("x-fal-webhook-timestamp")
    signature_hex = headers.get("x-fal-webhook-signature")
    if not all([request_id, user_id, timestamp, signature_hex]):
        return False
    try:
        if abs(int(time.time()) - int(timestamp)) > TOLERANCE_S:
            return False
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    message = "\n".join(
        [request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]
    ).encode("utf-8")
    for key in fetch_jwks(jwks_url):
        try:
            VerifyKey(b64url_decode(key["x"])).verify(message, signature)
            return True
        except (BadSignatureError, KeyError, ValueError):
            continue
    return False


class Receiver:
    """Collects webhooks on 127.0.0.1; `fail_first` answers 500 that many times first."""

    def __init__(self, jwks_url, fail_first=0):
        self.jwks_url = jwks_url
        self.fail_left = fail_first
        self.received = []  # (headers, body, verified)
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    if receiver.fail_left > 0:
                        receiver.fail_left -= 1
                        self.send_response(500)
                        self.end_headers()
                        return
                ok = verify(receiver.jwks_url, headers, body)
                with receiver.lock:
                    receiver.received.append((headers, body, ok))
                self.send_response(200 if ok else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/fal/webhook"

    def wait(self, count, timeout_s=30):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        with self.lock:
            return list(self.received)

    def close(self):
        self.server.shutdown()
