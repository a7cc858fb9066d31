"""Interop scenarios driven by real Python Celery (run with /usr/bin/python3).

Usage: scenarios.py NAME  (environment: BROKER, BACKEND, QUEUE, and per scenario extras)
Each scenario asserts what a Python user relies on and prints one JSON object on its last
stdout line; a failed assertion exits non-zero with the reason.
"""
import json
import math
import os
import sys
import uuid

from celery import Celery
from celery.exceptions import NotRegistered, TaskRevokedError

BROKER = os.environ["BROKER"]
BACKEND = os.environ.get("BACKEND") or None
QUEUE = os.environ["QUEUE"]
TIMEOUT = float(os.environ.get("TIMEOUT", "30"))

app = Celery("interop", broker=BROKER, backend=BACKEND)
app.conf.task_default_queue = QUEUE
app.conf.broker_transport_options = {"visibility_timeout": 3600}


def send(name, args=(), kwargs=None, **opts):
    return app.send_task(name, args=list(args), kwargs=kwargs or {}, queue=QUEUE, **opts)


def check(cond, what):
    if not cond:
        print(json.dumps({"ok": False, "failed": what}))
        sys.exit(1)


def expect_raise(res, exc_name, msg=None):
    try:
        value = res.get(timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - we check the type by name
        check(type(exc).__name__ == exc_name, "want %s, got %r" % (exc_name, exc))
        if msg is not None:
            check(msg in str(exc), "want message %r in %r" % (msg, str(exc)))
        return exc
    check(False, "want %s, got value %r" % (exc_name, value))


def diag():
    """Every diag task, by send_task, results read with get()."""
    out = {}
    check(send("diag.add", (2, 3)).get(timeout=TIMEOUT) == 5, "add ints")
    r = send("diag.add", (1.5, 2)).get(timeout=TIMEOUT)
    check(r == 3.5 and isinstance(r, float), "add floats")
    r = send("diag.add", (1.0, 2.0)).get(timeout=TIMEOUT)
    check(r == 3.0 and isinstance(r, float), "whole floats stay floats: %r" % r)
    big = 2 ** 70
    check(send("diag.add", (big, 1)).get(timeout=TIMEOUT) == big + 1, "big ints exact")
    check(send("diag.add", kwargs={"x": 40, "y": 2}).get(timeout=TIMEOUT) == 42, "kwargs")
    value = {"ünïcødé": ["日本語", "😀", None, True, 1, 2.5, {"nested": {"deep": [1, [2, [3]]]}}], "empty": {}}
    check(send("diag.echo", (value,)).get(timeout=TIMEOUT) == value, "echo unicode nested")
    nan = send("diag.echo", (float("nan"),)).get(timeout=TIMEOUT)
    check(isinstance(nan, float) and math.isnan(nan), "NaN round trip: %r" % nan)
    check(send("diag.echo", (float("inf"),)).get(timeout=TIMEOUT) == float("inf"), "Infinity")
    check(send("diag.sleep", (0.2,)).get(timeout=TIMEOUT) == 0.2, "sleep")
    check(send("diag.cpu", (20,)).get(timeout=TIMEOUT) == 20, "cpu")
    exc = expect_raise(send("diag.fail", ("boom",)), "RuntimeError", "boom")
    check(isinstance(exc, RuntimeError) and exc.args == ("boom",), "RuntimeError args %r" % (exc.args,))
    expect_raise(send("diag.add", (1,)), "TypeError", "missing required argument")
    out["unknown_id"] = unknown = str(uuid.uuid4())
    exc = expect_raise(send("no.such.task", (1,), task_id=unknown), "NotRegistered", "no.such.task")
    check(isinstance(exc, NotRegistered), "NotRegistered class")
    # Many at once: all results come back.
    results = [send("diag.add", (i, i)) for i in range(50)]
    check([r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(50)], "burst of 50")
    out["ok"] = True
    print(json.dumps(out))


def poison():
    """A malformed JSON body and a pickle message go to the DLQ; the worker keeps serving."""
    bad_id, pickle_id = str(uuid.uuid4()), str(uuid.uuid4())
    with app.producer_or_acquire() as producer:
        producer.publish(b'[[1, 2], {}, {"callbacks": nul', exchange="", routing_key=QUEUE,
                         content_type="application/json", content_encoding="utf-8",
                         headers={"task": "diag.add", "id": bad_id, "lang": "py"},
                         correlation_id=bad_id, declare=[app.amqp.queues[QUEUE]], retry=True)
    app.conf.accept_content = ["json", "pickle"]
    pickled = send("diag.add", (1, 2), task_id=pickle_id, serializer="pickle")
    if BACKEND and not BACKEND.startswith("rpc"):
        expect_raise(app.AsyncResult(bad_id), "DecodeError")
        expect_raise(pickled, "ContentDisallowed")
    check(send("diag.add", (1, 2)).get(timeout=TIMEOUT) == 3, "still serving")
    print(json.dumps({"ok": True, "bad_id": bad_id, "pickle_id": pickle_id}))


def produce():
    """Send COUNT diag.sleep(SECONDS) tasks without waiting; print their ids."""
    count, seconds = int(os.environ["COUNT"]), float(os.environ.get("SECONDS", "1"))
    name = os.environ.get("TASK", "diag.sleep")
    ids = [send(name, (seconds,)).id for _ in range(count)]
    print(json.dumps({"ok": True, "ids": ids}))


def collect():
    """Wait for every id in IDS (a file of JSON ids) to be SUCCESS; print the states."""
    with open(os.environ["IDS"]) as f:
        ids = json.load(f)
    states = {}
    for tid in ids:
        res = app.AsyncResult(tid)
        try:
            res.get(timeout=TIMEOUT)
            states[tid] = res.state
        except Exception as exc:  # noqa: BLE001
            states[tid] = "ERROR %r" % exc
    print(json.dumps({"ok": True, "states": states}))


if __name__ == "__main__":
    globals()[sys.argv[1]]()
