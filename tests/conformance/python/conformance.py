"""The real Python fal-client (1.0.3) against a runmesh node over TLS.

Configured only the documented way, by the test that starts the node (tests/tests/compat_clients.rs):
FAL_RUN_HOST, FAL_QUEUE_RUN_HOST, FAL_KEY, SSL_CERT_FILE. Nothing in fal_client is patched, except
REST_URL for the one check of `realtime(use_jwt=True)` and the uploads, and CDN_URL for the uploads
(fal hard-codes rest.fal.ai and v3.fal.media there; see docs/COMPATIBILITY.md). Prints one `ok:` line per check; exits non-zero on the first failure.
"""

import json
import os
import sys
import time

import fal_client
import httpx
import fal_client.client as fc
from fal_client.client import FalClientHTTPError, RealtimeError

from webhook_receiver import Receiver

RUN_HOST = os.environ["FAL_RUN_HOST"]
WAIT_S = 30


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}", flush=True)


def wait_status(handle, pred, what):
    deadline = time.time() + WAIT_S
    st = handle.status(with_logs=True)
    while not pred(st) and time.time() < deadline:
        time.sleep(0.05)
        st = handle.status(with_logs=True)
    check(pred(st), what)
    return st


def main():
    client = fal_client.SyncClient(default_timeout=60)

    # run: the output comes back directly over https.
    out = client.run("runmesh/echo", {"hello": "world", "n": [1, 2, 3]})
    check(out == {"hello": "world", "n": [1, 2, 3]}, "run returns the output (https)")
    check(client.run("runmesh/echo", {"ignored": 1}, method="GET") == {}, "run with method=GET (no body)")

    # submit → status with logs → result; URLs are https and follow the server's answer.
    h = client.submit("runmesh/sleep", {"ms": 300}, priority="low", hint="h1", start_timeout=30)
    check(h.status_url.startswith("https://"), f"status_url is https: {h.status_url}")
    st = wait_status(h, lambda s: isinstance(s, fal_client.Completed), "submitted job completes")
    check(any("slept" in (l.get("message") or "") or "sleep" in (l.get("message") or "") for l in (st.logs or [])),
          "status with logs carries log lines")
    check(st.metrics.get("inference_time") is not None, "metrics.inference_time on COMPLETED")
    check(h.get() == {"slept_ms": 300}, "result of a submitted job")
    check(client.result("runmesh/sleep", h.request_id) == {"slept_ms": 300}, "result by id")
    check(isinstance(client.status("runmesh/sleep", h.request_id), fal_client.Completed), "status by id")

    # subscribe with queue updates: IN_PROGRESS with logs, then the result.
    updates = []
    res = client.subscribe("runmesh/sleep", {"ms": 400}, with_logs=True, on_queue_update=updates.append)
    check(res == {"slept_ms": 400}, "subscribe returns the output")
    check(any(isinstance(u, fal_client.InProgress) for u in updates), "subscribe saw IN_PROGRESS")
    check(any(isinstance(u, fal_client.InProgress) and u.logs for u in updates), "subscribe saw logs")

    # cancel a running job: COMPLETED with client_cancelled, result raises 499.
    h = client.submit("runmesh/sleep", {"ms": 30000})
    wait_status(h, lambda s: isinstance(s, fal_client.InProgress), "long job starts")
    h.cancel()
    st = wait_status(h, lambda s: isinstance(s, fal_client.Completed), "cancelled job completes")
    check(st.error_type == "client_cancelled", f"cancelled job error_type {st.error_type}")
    try:
        h.cancel()
        check(False, "cancel of a finished job raises")
    except FalClientHTTPError as e:
        check(e.status_code == 400, "cancel of a finished job is 400 ALREADY_COMPLETED")

    # stream: partial outputs then the final output, over https.
    events = list(client.stream("runmesh/stream", {"n": 3, "interval_ms": 10}))
    check(events == [{"i": 0}, {"i": 1}, {"i": 2}, {"n": 3}], f"stream events {events}")

    # A failing app: COMPLETED with error; the result raises with the message.
    h = client.submit("runmesh/fail", {"message": "boom"})
    st = wait_status(h, lambda s: isinstance(s, fal_client.Completed), "failing job completes")
    check(st.error and st.error_type, f"failed job status has error/error_type: {st.error} {st.error_type}")
    try:
        h.get()
        check(False, "result of a failed job raises")
    except FalClientHTTPError as e:
        check(e.status_code >= 400 and "boom" in str(e.message), "result of a failed job raises with the message")
    try:
        client.subscribe("runmesh/fail", {"message": "kaput"})
        check(False, "subscribe to a failing app raises")
    except FalClientHTTPError as e:
        check("kaput" in str(e.message), "subscribe to a failing app raises the app's error")

    # Invalid input: 422 with a detail array.
    try:
        client.run("runmesh/sleep", {"ms": "soon"})
        check(False, "invalid input raises")
    except FalClientHTTPError as e:
        check(e.status_code == 422, f"invalid input is 422 ({e.status_code}: {e.message})")

    # A bad key: fal's 401 body; a malformed one: fal's format message.
    bad = fal_client.SyncClient(key="nobody:nothing")
    try:
        bad.run("runmesh/echo", {})
        check(False, "a bad key is refused")
    except FalClientHTTPError as e:
        check(e.status_code == 401 and e.message == "No user found for Key ID and Secret",
              f"bad key: 401 {e.message}")
    try:
        fal_client.SyncClient(key="no-colon").submit("runmesh/echo", {})
        check(False, "a malformed key is refused")
    except FalClientHTTPError as e:
        check(e.status_code == 401 and "Expected '<key_id>:<key_secret>'" in e.message, f"malformed key: {e.message}")

    # Realtime, use_jwt=False: Authorization on the handshake, msgpack frames both ways.
    with client.realtime("runmesh/echo", use_jwt=False) as conn:
        conn.send({"x": 1})
        check(conn.recv() == {"x": 1}, "realtime echo (use_jwt=False)")
        conn.send({"y": [1, 2], "z": "s"})
        check(conn.recv() == {"y": [1, 2], "z": "s"}, "realtime second message on the same socket")
        # `bytes` go out as msgpack bin; runmesh's JSON inputs take them as data URIs.
        conn.send({"raw": b"\x00\x01\xff"})
        got = conn.recv()
        check(got == {"raw": "data:application/octet-stream;base64,AAH/"}, f"realtime bin input {got}")
    with client.realtime("runmesh/stream", use_jwt=False, max_buffering=4) as conn:
        conn.send({"n": 2, "interval_ms": 10})
        got = [conn.recv() for _ in range(3)]
        check(got == [{"i": 0}, {"i": 1}, {"n": 2}], f"realtime stream frames {got}")
    with client.realtime("runmesh/fail", use_jwt=False) as conn:
        conn.send({"message": "rt-boom"})
        try:
            conn.recv()
            check(False, "realtime error frame raises")
        except RealtimeError as e:
            check("rt-boom" in str(e), f"realtime error frame: {e}")
    try:
        with bad.realtime("runmesh/echo", use_jwt=False) as conn:
            conn.send({"x": 1})
            conn.recv()
        check(False, "realtime with a bad key is refused")
    except Exception as e:  # websockets' InvalidStatus on the 401 handshake
        check("401" in str(e), f"realtime with a bad key is refused: {type(e).__name__}")

    # HTTP over WebSocket (fal's wss://ws.fal.run/{endpoint}; no client library uses it, the fal
    # SDK's apps.ws does): /ws/{endpoint} here, Authorization on the handshake.
    from websockets.sync.client import connect

    auth = {"Authorization": f"Key {os.environ['FAL_KEY']}"}
    with connect(f"wss://{RUN_HOST}/ws/runmesh/echo", additional_headers=auth) as ws:
        for n in (1, 2):
            ws.send(json.dumps({"n": n}))
            start, body, end = (json.loads(ws.recv()) for _ in range(3))
            check(start["type"] == "start" and start["status"] == 200 and body == {"n": n}
                  and end["type"] == "end" and end["request_id"] == start["request_id"],
                  f"http-over-websocket request {n} in order")
    with connect(f"wss://{RUN_HOST}/ws/runmesh/fail", additional_headers=auth) as ws:
        ws.send(json.dumps({"message": "ws-boom"}))
        start, body, end = (json.loads(ws.recv()) for _ in range(3))
        check(start["status"] == 500 and "ws-boom" in json.dumps(body), f"http-over-websocket error {start} {body}")

    # Realtime with a token: fal hard-codes REST_URL (rest.fal.ai), so point it here.
    fc.REST_URL = f"https://{RUN_HOST}"
    with client.realtime("runmesh/echo") as conn:
        conn.send({"t": True})
        check(conn.recv() == {"t": True}, "realtime with a fal_jwt_token from /tokens/")

    # Webhook: signed, verified by a receiver that knows only the JWKS; one 500 first, then retried.
    receiver = Receiver(f"https://{RUN_HOST}/.well-known/jwks.json", fail_first=1)
    h = client.submit("runmesh/echo", {"hook": 1}, webhook_url=receiver.url)
    got = receiver.wait(1)
    check(len(got) == 1, "webhook delivered after a failed first attempt")
    headers, body, verified = got[0]
    check(verified, "webhook signature verifies against the JWKS")
    payload = json.loads(body)
    check(payload["status"] == "OK" and payload["payload"] == {"hook": 1}, f"webhook payload {payload}")
    check(payload["request_id"] == h.request_id == headers["x-fal-webhook-request-id"], "webhook request ids")
    h = client.submit("runmesh/fail", {"message": "hook-boom"}, webhook_url=receiver.url)
    got = receiver.wait(2)
    check(len(got) == 2 and got[1][2], "error webhook delivered and verified")
    payload = json.loads(got[1][1])
    check(payload["status"] == "ERROR" and "hook-boom" in json.dumps(payload["payload"]), f"error webhook {payload}")
    receiver.close()

    # Files: an app's output File object downloads over https, and `upload` (fal hard-codes its
    # REST_URL and CDN_URL: REST_URL points here already, CDN_URL too now) returns a URL that an
    # app reads as a local file.
    out = client.subscribe("runmesh/noise", {"bytes": 300000, "seed": 9})
    f = out["file"]
    check(f["file_size"] == 300000 and f["content_type"] == "application/octet-stream"
          and f["url"].startswith("https://"), f"an output File object {f}")
    got = httpx.get(f["url"]).content
    check(len(got) == 300000, "the output file downloads whole")
    fc.CDN_URL = f"https://{RUN_HOST}"
    uploader = fal_client.SyncClient(default_timeout=60)
    data = bytes(range(256)) * 1000
    url = uploader.upload(data, "image/png", file_name="in.png")
    check(url.startswith("https://") and "/files/" in url, f"upload returns a file URL {url}")
    check(httpx.get(url).content == data, "the uploaded file reads back")
    out = client.subscribe("runmesh/hash", {"file_url": url})
    check(out["size"] == len(data) and out["blake3"] in url, f"an app reads the upload {out}")

    print("all fal-client conformance checks passed", flush=True)


if __name__ == "__main__":
    main()
