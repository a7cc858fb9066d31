"""Observability scenarios driven by real Python Celery (run with /usr/bin/python3).

Usage: observe.py NAME  (environment: BROKER, BACKEND, QUEUE, GO_HOST, and per scenario extras)
Each scenario prints one JSON object on its last stdout line; a failed check exits non-zero.
"""
import json
import os
import secrets
import subprocess
import sys
import time

from celery import Celery
from celery.exceptions import TaskRevokedError
from celery.signals import before_task_publish

BROKER = os.environ["BROKER"]
BACKEND = os.environ.get("BACKEND") or None
QUEUE = os.environ.get("QUEUE", "celery")
GO_HOST = os.environ.get("GO_HOST", "")
TIMEOUT = float(os.environ.get("TIMEOUT", "30"))

app = Celery("observe", broker=BROKER, backend=BACKEND)
app.conf.task_default_queue = QUEUE


def check(cond, what):
    if not cond:
        print(json.dumps({"ok": False, "failed": what}), flush=True)
        sys.exit(1)


def send(name, args=(), **opts):
    return app.send_task(name, args=list(args), queue=QUEUE, **opts)


def cli(*args):
    """Run the celery command line (as an operator would) and return its stdout."""
    p = subprocess.run([sys.executable, "-m", "celery", "-b", BROKER] + list(args),
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def receiver():
    """events.State fed by a Receiver, as Flower and `celery events` use it: the Go worker is
    alive within 2 x freq of the receiver starting, and offline once it shuts down (the Go
    test stops it after reading "alive")."""
    state = app.events.State()
    out = {"ok": True}
    start = time.monotonic()
    phase = ["waiting"]
    holder = {}

    def on_event(event):
        state.event(event)
        w = state.workers.get(GO_HOST)
        if w is None:
            return
        if phase[0] == "waiting" and w.alive:
            phase[0] = "alive"
            out["alive_after_s"] = time.monotonic() - start
            out["freq"] = w.freq
            out["sw_ident"] = w.sw_ident
            print("alive", flush=True)
        elif phase[0] == "alive" and event["type"] == "worker-offline" and event["hostname"] == GO_HOST:
            phase[0] = "offline"
            out["offline_alive"] = w.alive
            out["processed"] = w.processed
            holder["recv"].should_stop = True

    with app.connection() as conn:
        recv = holder["recv"] = app.events.Receiver(conn, handlers={"*": on_event})
        try:
            recv.capture(limit=None, timeout=TIMEOUT, wakeup=True)
        except Exception as exc:  # noqa: BLE001 - a timeout ends the capture
            out["capture_error"] = repr(exc)
    check(phase[0] == "offline", "phase reached: %s (%r)" % (phase[0], out))
    print(json.dumps(out), flush=True)


def tasks():
    """A few tasks of each outcome, so task events and metrics exist."""
    check(send("diag.add", (2, 3)).get(timeout=TIMEOUT) == 5, "add")
    try:
        send("diag.fail", ("boom",)).get(timeout=TIMEOUT)
        check(False, "diag.fail did not fail")
    except RuntimeError:
        pass
    print(json.dumps({"ok": True}))


def wait_active(task_id):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        active = (app.control.inspect(destination=[GO_HOST], timeout=2).active() or {}).get(GO_HOST) or []
        if any(a["id"] == task_id for a in active):
            return
        time.sleep(0.2)
    check(False, "task %s never active" % task_id)


def revoke():
    """`celery control revoke ID` keeps a queued task from running; `celery control
    terminate SIGTERM ID` stops a running diag.sleep."""
    blocker = send("diag.sleep", (4,))
    wait_active(blocker.id)  # the only slot (-c 1) is taken: the next task stays queued
    queued = send("diag.add", (1, 1))
    code, text = cli("control", "revoke", queued.id, "-d", GO_HOST)
    check(code == 0 and "flagged as revoked" in text, "revoke CLI: %d %s" % (code, text))
    try:
        queued.get(timeout=TIMEOUT)
        check(False, "revoked task ran")
    except TaskRevokedError:
        pass
    check(blocker.get(timeout=TIMEOUT) == 4, "blocker")

    running = send("diag.sleep", (60,))
    wait_active(running.id)
    t0 = time.time()
    code, text = cli("control", "terminate", "SIGTERM", running.id, "-d", GO_HOST)
    check(code == 0 and "terminate: " + running.id in text, "terminate CLI: %d %s" % (code, text))
    try:
        running.get(timeout=TIMEOUT)
        check(False, "terminated task succeeded")
    except TaskRevokedError:
        pass
    print(json.dumps({"ok": True, "terminated_after_s": time.time() - t0}))


def traced():
    """A producer span's context written into the message headers exactly where
    opentelemetry-instrumentation-celery's before_task_publish handler puts it
    (propagate.inject(headers): a W3C traceparent header). Debian has no opentelemetry
    for /usr/bin/python3, so the header is written by hand, byte for byte as the W3C
    propagator formats it."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)

    @before_task_publish.connect(weak=False)
    def inject(headers=None, **kwargs):
        headers["traceparent"] = "00-%s-%s-01" % (trace_id, span_id)
        headers["tracestate"] = "py=producer"

    res = send("diag.add", (20, 22))
    check(res.get(timeout=TIMEOUT) == 42, "traced task result")
    print(json.dumps({"ok": True, "trace_id": trace_id, "span_id": span_id, "task_id": res.id}))


if __name__ == "__main__":
    globals()[sys.argv[1]]()
