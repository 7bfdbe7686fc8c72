"""Drives a running runmesh node with the real Python fal-client (1.0.3) and checks what it sees.

Usage: python fal_client_check.py http://127.0.0.1:PORT
fal-client forces https; until the node serves TLS, the client's URL formats are pointed at plain
http the documented way (module globals read at call time). Exits non-zero on the first failure.
"""

import sys
import time

import fal_client
import fal_client.client as fc


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}")


def main(base: str) -> None:
    base = base.rstrip("/")
    fc.RUN_URL_FORMAT = base + "/"
    fc.QUEUE_URL_FORMAT = base + "/queue/"
    client = fal_client.SyncClient(key="runmesh-test:secret", default_timeout=30)

    # Sync run: the output comes back directly.
    out = client.run("runmesh/echo", {"hello": "world", "n": [1, 2, 3]})
    check(out == {"hello": "world", "n": [1, 2, 3]}, "run returns the echo output")

    # Queue submit with a subpath; the handle follows the URLs the server returned.
    handle = client.submit("runmesh/echo/some/sub", {"x": 1}, priority="low", hint="h1", start_timeout=30)
    check(handle.request_id and "/queue/runmesh/echo/requests/" in handle.status_url, "submit URLs drop the subpath")
    check(handle.get() == {"x": 1}, "submit + get returns the output")
    st = client.status("runmesh/echo", handle.request_id, with_logs=False)
    check(isinstance(st, fal_client.Completed), "status by id (URL rebuilt by the client) is Completed")
    check(client.result("runmesh/echo", handle.request_id) == {"x": 1}, "result by id")

    # subscribe with logs: sees IN_PROGRESS with log lines, then the result.
    updates = []
    result = client.subscribe(
        "runmesh/sleep", {"ms": 400}, with_logs=True, on_queue_update=updates.append, interval=0.05
    )
    check(result == {"slept_ms": 400}, "subscribe returns the sleep output")
    check(any(isinstance(u, fal_client.InProgress) for u in updates), "subscribe saw IN_PROGRESS")
    logs = [l for u in updates if isinstance(u, (fal_client.InProgress, fal_client.Completed)) for l in (u.logs or [])]
    check(any("slept" in l.get("message", "") or "sleep" in l.get("message", "") for l in logs), "log lines arrive")

    # A failing app: the status is COMPLETED with an error, and the result raises the HTTP error.
    h = client.submit("runmesh/fail", {"message": "boom"})
    deadline = time.time() + 20
    st = h.status()
    while not isinstance(st, fal_client.Completed) and time.time() < deadline:
        time.sleep(0.05)
        st = h.status()
    check(isinstance(st, fal_client.Completed) and st.error, "failed job is COMPLETED with error")
    try:
        h.get()
        check(False, "result of a failed job raises")
    except fal_client.client.FalClientHTTPError as e:
        check(e.status_code >= 400 and "boom" in str(e.message), "result of a failed job raises with the message")

    # Streaming: partial outputs, then the final output.
    events = list(client.stream("runmesh/stream", {"n": 3, "interval_ms": 10}))
    check(events == [{"i": 0}, {"i": 1}, {"i": 2}, {"n": 3}], f"stream events {events}")

    # Cancel a running job.
    h = client.submit("runmesh/sleep", {"ms": 30000})
    deadline = time.time() + 20
    while not isinstance(h.status(), fal_client.InProgress) and time.time() < deadline:
        time.sleep(0.05)
    h.cancel()
    deadline = time.time() + 20
    st = h.status()
    while not isinstance(st, fal_client.Completed) and time.time() < deadline:
        time.sleep(0.05)
        st = h.status()
    check(isinstance(st, fal_client.Completed) and st.error_type == "client_cancelled", "cancelled job completes as client_cancelled")

    # Queue positions are real integers.
    blockers = [client.submit("runmesh/sleep", {"ms": 500}) for _ in range(6)]
    st = blockers[-1].status()
    check(isinstance(st, (fal_client.Queued, fal_client.InProgress, fal_client.Completed)), "status of a queued job parses")
    if isinstance(st, fal_client.Queued):
        check(isinstance(st.position, int) and st.position >= 0, f"queue position {st.position}")
    for b in blockers:
        b.get()
    print("all fal-client checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
