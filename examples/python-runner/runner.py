#!/usr/bin/env python3
"""An external runmesh runner in plain Python (stdlib only): the contract in docs/RUNNERS.md.

The node starts it (`runmesh dev --runner "python3 examples/python-runner/runner.py"`) and speaks
JSON lines with it: requests on stdin, replies and events on stdout, free-form logs on stderr.

It serves one app, `example/words`:
  input  {"text": str, "delay_ms": int (0..10000, default 0), "fail": bool (default false)}
  output {"words": int, "upper": str, "reversed": [str, ...]}
and streams each word as a partial output {"i": k, "word": w}, delay_ms apart, so a client on
`/stream` sees them one by one. A `cancel` for the job stops it between words.

Replace `run_words` with a real model (PyTorch, ONNX, ...): load it before answering `manifest`,
and the node waits for that (up to 120 s) before it serves the app.
"""

import json
import sys
import threading

PROTOCOL = 1

MANIFEST = {
    "protocol": PROTOCOL,
    "apps": [
        {
            "id": "example/words",
            "description": "Splits text into words, streaming them one by one (an example runner).",
            "streams": True,
            "models": [],
            "input_schema": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "maxLength": 100000},
                    "delay_ms": {"type": "integer", "minimum": 0, "maximum": 10000},
                    "fail": {"type": "boolean"},
                },
                "required": ["text"],
            },
            "output_schema": {
                "type": "object",
                "properties": {
                    "words": {"type": "integer"},
                    "upper": {"type": "string"},
                    "reversed": {"type": "array", "items": {"type": "string"}},
                },
            },
            "gpu_memory_mb": 0,
            "memory_mb": 20,
            "warmup_ms": 0,
            "artifact_types": [],
        }
    ],
}

_out_lock = threading.Lock()
_cancels = {}  # job id -> threading.Event
_cancels_lock = threading.Lock()


def send(msg):
    """One JSON object per line; the lock keeps lines of concurrent jobs whole."""
    line = json.dumps(msg, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_words(job_id, inp, cancelled):
    text = inp.get("text", "")
    delay = inp.get("delay_ms", 0) / 1000.0
    words = text.split()
    send({"id": job_id, "log": {"level": "info", "message": f"splitting {len(words)} words"}})
    for i, w in enumerate(words):
        if i > 0 and delay > 0 and cancelled.wait(delay):
            break
        if cancelled.is_set():
            break
        send({"id": job_id, "partial": {"i": i, "word": w}})
        send({"id": job_id, "progress": {"done": i + 1, "total": len(words)}})
    if cancelled.is_set():
        send({"id": job_id, "error": {"message": "cancelled", "type": "client_cancelled"}})
        return
    if inp.get("fail"):
        send({"id": job_id, "error": {"message": "asked to fail", "type": "runner_server_error"}})
        return
    send({"id": job_id, "output": {"words": len(words), "upper": text.upper(), "reversed": words[::-1]}})


def run_job(job_id, model, inp):
    with _cancels_lock:
        cancelled = _cancels.setdefault(job_id, threading.Event())
    try:
        run_words(job_id, inp, cancelled)
    except Exception as e:  # a bug in the model must fail the job, not the runner
        send({"id": job_id, "error": {"message": f"{type(e).__name__}: {e}"}})
    finally:
        with _cancels_lock:
            _cancels.pop(job_id, None)


def main():
    print("example runner started", file=sys.stderr, flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError:
            print(f"ignoring a line that is not JSON: {line[:200]}", file=sys.stderr, flush=True)
            continue
        op, rid = req.get("op"), req.get("id", "")
        if op == "manifest":
            send({"id": rid, "manifest": MANIFEST})
        elif op == "health":
            send({"id": rid, "health": {"ok": True}})
        elif op == "run":
            # One thread per job: runs are concurrent, as the node may send several.
            t = threading.Thread(target=run_job, args=(rid, req.get("model"), req.get("input") or {}), daemon=True)
            t.start()
        elif op == "cancel":
            with _cancels_lock:
                ev = _cancels.get(rid)
            if ev is not None:
                ev.set()
        else:
            print(f"unknown op {op!r}", file=sys.stderr, flush=True)
    # stdin closed: the node is gone or stopping; daemon threads end with us.


if __name__ == "__main__":
    main()
