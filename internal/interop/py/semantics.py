"""Task-semantics scenarios driven by real Python Celery (run with /usr/bin/python3).

Usage: semantics.py NAME  (environment: BROKER, BACKEND, QUEUE, and per scenario extras)
Each scenario uses only what a Python user of apply_async/canvas writes, asserts what that
user relies on, and prints one JSON object on its last stdout line; a failed assertion
exits non-zero with the reason.
"""
import datetime
import json
import os
import sys
import time

from celery import Celery, chain, chord, group
from kombu import Exchange, Queue

BROKER = os.environ["BROKER"]
BACKEND = os.environ.get("BACKEND") or None
QUEUE = os.environ["QUEUE"]
TIMEOUT = float(os.environ.get("TIMEOUT", "60"))

app = Celery("semantics", broker=BROKER, backend=BACKEND)
app.conf.task_default_queue = QUEUE
app.conf.broker_transport_options = {"visibility_timeout": 3600}
if os.environ.get("MAX_PRIORITY"):
    # Declared exactly as the Go worker's `queues: {Q: {max_priority: N}}` declares it.
    app.conf.task_queues = [Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE,
                                  queue_arguments={"x-max-priority": int(os.environ["MAX_PRIORITY"])})]


def sig(name, *args, **opts):
    return app.signature(name, args=args, **opts)


def send(name, args=(), **opts):
    return app.send_task(name, args=list(args), queue=opts.pop("queue", QUEUE), **opts)


def check(cond, what):
    if not cond:
        print(json.dumps({"ok": False, "failed": what}))
        sys.exit(1)


def expect_raise(res, exc_name, msg=None):
    wait_ready(res.id)
    try:
        value = res.get(timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - we check the type by name
        check(type(exc).__name__ == exc_name, "want %s, got %r" % (exc_name, exc))
        if msg is not None:
            check(msg in str(exc), "want message %r in %r" % (msg, str(exc)))
        return exc
    check(False, "want %s, got value %r" % (exc_name, value))


def meta(task_id):
    return app.backend.get_task_meta(task_id)


def wait_ready(task_id):
    """The raw meta of a task once it is ready (polling, without re-raising)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        m = app.backend.get_task_meta(task_id, cache=False)
        if m["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
            raw = app.backend.get(app.backend.get_key_for_task(task_id))
            return json.loads(raw)
        time.sleep(0.1)
    check(False, "task %s not ready" % task_id)


def value(res):
    """res.get(), once the result is stored. Celery's client subscribes to a result it did
    not send itself only when get() starts, and a result published in that very instant
    can be missed (a race of the Python client, whatever worker ran the task); waiting for
    the stored state first keeps the checks about the worker."""
    wait_ready(res.id)
    return res.get(timeout=TIMEOUT)


def done_at(task_id):
    """date_done of a finished task, as aware UTC (Celery 5.2 writes naive UTC)."""
    d = datetime.datetime.fromisoformat(meta(task_id)["date_done"])
    return d if d.tzinfo else d.replace(tzinfo=datetime.timezone.utc)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def out(**kw):
    kw["ok"] = True
    print(json.dumps(kw))


def retries():
    """Task.retry (diag.flaky) and autoretry_for, with max_retries."""
    r = send("diag.flaky", (2,))
    check(r.get(timeout=TIMEOUT) == 3, "flaky(2) returns its 3 attempts")
    check(meta(r.id).get("parent_id") == r.id, "a retry's parent_id is the task itself: %r" % meta(r.id))
    exhausted = send("diag.flaky", (5,))
    expect_raise(exhausted, "MaxRetriesExceededError", "Can't retry diag.flaky[%s]" % exhausted.id)
    auto = send("diag.fail", ("auto",))
    exc = expect_raise(auto, "RuntimeError", "auto")
    check(isinstance(exc, RuntimeError), "autoretry_for: the cause is re-raised once retries are used up")
    out(exhausted=exhausted.id, auto=auto.id, flaky=r.id)


def eta():
    """countdown and eta: the task runs no earlier than asked."""
    t0 = now()
    r = send("diag.echo", ("countdown",), countdown=2)
    check(r.get(timeout=TIMEOUT) == "countdown", "countdown result")
    ran = done_at(r.id)
    check(ran - t0 >= datetime.timedelta(seconds=2), "countdown=2 ran after %s" % (ran - t0))
    at = now() + datetime.timedelta(seconds=1.5)
    r2 = send("diag.echo", ("eta",), eta=at)
    check(r2.get(timeout=TIMEOUT) == "eta", "eta result")
    check(done_at(r2.id) >= at, "eta ran at %s, before %s" % (done_at(r2.id), at))
    out()


def expires():
    """expires: a task received after it, or expiring while held for its ETA, is never run."""
    late = send("diag.echo", ("late",), expires=now() - datetime.timedelta(seconds=5))
    expect_raise(late, "TaskRevokedError", "expired")
    held = send("diag.echo", ("held",), countdown=3, expires=1)
    expect_raise(held, "TaskRevokedError", "expired")
    check(meta(held.id)["status"] == "REVOKED", "state REVOKED")
    out(late=late.id, held=held.id)


def timelimits():
    """soft_time_limit and time_limit ([hard, soft] in the timelimit header)."""
    expect_raise(send("diag.sleep", (30,), soft_time_limit=1), "SoftTimeLimitExceeded")
    t0 = time.monotonic()
    expect_raise(send("diag.sleep", (30,), time_limit=1), "TimeLimitExceeded")
    took = time.monotonic() - t0
    check(took < 25, "the hard limit did not cut a 30 s task (%.1f s)" % took)
    check(send("diag.add", (2, 2)).get(timeout=TIMEOUT) == 4, "still serving after a hard limit")
    out()


def ratelimit():
    """rate_limit 5/s on diag.cpu: 20 tasks take at least 3.8 s; others are not held up."""
    n = int(os.environ.get("COUNT", "20"))
    t0 = time.monotonic()
    limited = [send("diag.cpu", (0,)) for _ in range(n)]
    free = send("diag.add", (1, 1)) if os.environ.get("FREE") else None
    for r in limited:
        check(r.get(timeout=TIMEOUT) == 0, "diag.cpu result")
    took = time.monotonic() - t0
    check(took >= 3.8, "%d tasks at 5/s took %.2f s, want >= 3.8" % (n, took))
    if free is not None:
        check(free.get(timeout=TIMEOUT) == 2, "free task result")
        last = max(done_at(r.id) for r in limited)
        check(done_at(free.id) < last, "an unlimited task waited behind rate-limited ones")
    out(took=took, ids=[r.id for r in limited])


def prio_send():
    """A backlog of low-priority tasks, then high-priority ones (no worker running yet)."""
    low, high = int(os.environ["LOW"]), int(os.environ["HIGH"])
    lows = [send("diag.echo", ("low%d" % i,), priority=low).id for i in range(8)]
    highs = [send("diag.echo", ("high%d" % i,), priority=high).id for i in range(4)]
    out(lows=lows, highs=highs)


def prio_check():
    """The high-priority tasks complete before the low-priority backlog."""
    with open(os.environ["IDS"]) as f:
        ids = json.load(f)
    for tid in ids["lows"] + ids["highs"]:
        app.AsyncResult(tid).get(timeout=TIMEOUT)
    last_high = max(done_at(t) for t in ids["highs"])
    lows_before = [t for t in ids["lows"] if done_at(t) < last_high]
    check(len(lows_before) <= 1, "%d low-priority tasks finished before the high ones" % len(lows_before))
    out(lows_before=len(lows_before))


def canvas():
    """link, link_error, chain, group, chord and their nested forms."""
    # link: the callback gets the result prepended; it is a child of the task.
    cb = sig("diag.add", 10)
    cb.freeze()
    r = sig("diag.add", 2, 3).apply_async(link=cb)
    check(r.get(timeout=TIMEOUT) == 5, "linked task")
    check(value(app.AsyncResult(cb.id)) == 15, "link callback got the result prepended")
    check([c.id for c in app.AsyncResult(r.id).children or []] == [cb.id], "callback listed as child")
    m = meta(cb.id)
    check(m.get("parent_id") == r.id, "callback parent_id: %r" % m)
    # immutable callbacks and several callbacks (sent as one group).
    c1, c2 = sig("diag.echo", "fixed", immutable=True), sig("diag.add", 100)
    c1.freeze()
    c2.freeze()
    r = sig("diag.add", 1, 1).apply_async(link=[c1, c2])
    r.get(timeout=TIMEOUT)
    check(value(app.AsyncResult(c1.id)) == "fixed", "immutable callback keeps its args")
    check(value(app.AsyncResult(c2.id)) == 102, "second callback")
    check(meta(c1.id).get("group_id") and meta(c1.id).get("group_id") == meta(c2.id).get("group_id"),
          "several callbacks are sent as one group")
    # link_error: the errback gets the failed task's id, sent as a group.
    eb = sig("diag.echo")
    eb.freeze()
    f = sig("diag.fail", "boom").apply_async(link_error=eb)
    expect_raise(f, "RuntimeError", "boom")
    check(value(app.AsyncResult(eb.id)) == f.id, "errback got the failed task id")
    check(meta(eb.id).get("group_id"), "the errback is sent as a group")
    # chain: results passed along, parent ids linked.
    c = chain(sig("diag.add", 1, 2), sig("diag.add", 3), sig("diag.add", 4))()
    check(value(c) == 10, "chain result")
    check(meta(c.id).get("parent_id") == c.parent.id, "chain step parent_id")
    # a failing chain stops, its pending steps fail, and its errback fires.
    eb2 = sig("diag.echo")
    eb2.freeze()
    c = chain(sig("diag.add", 1, 2), sig("diag.fail", "chain broke", immutable=True), sig("diag.add", 4)).apply_async(
        link_error=eb2)
    expect_raise(c, "RuntimeError", "chain broke")
    check(value(app.AsyncResult(eb2.id)) == c.parent.id, "chain errback got the failed step id")
    # group: members carry the group id; GroupResult.get() works.
    g = group(sig("diag.add", i, i) for i in range(5))()
    check(g.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8], "group result")
    check(all(meta(x.id).get("group_id") == g.id for x in g.results), "results carry group_id")
    # chord, and a chord whose header fails.
    ch = chord([sig("diag.add", i, i) for i in range(5)], sig("diag.echo"))()
    check(value(ch) == [0, 2, 4, 6, 8], "chord result")
    bad = chord([sig("diag.add", 1, 1), sig("diag.fail", "hdr", immutable=True)], sig("diag.echo"))()
    # get() re-raises the failed header task first (the result's parent), as with Python
    # workers; the body itself fails with ChordError.
    expect_raise(bad, "RuntimeError", "hdr")
    body = wait_ready(bad.id)
    check(body["status"] == "FAILURE" and body["result"]["exc_type"] == "ChordError"
          and "Dependency" in body["result"]["exc_message"][0], "chord body: %r" % body)
    # nested: a chain ending in a group, a group | task inside a chain (a chord), and a
    # chord in the middle of a chain.
    n1 = (sig("diag.add", 1, 1) | group(sig("diag.add", 10), sig("diag.add", 20)))()
    for member in n1.results:
        wait_ready(member.id)
    check(n1.get(timeout=TIMEOUT) == [12, 22], "chain ending in a group")
    n2 = (sig("diag.add", 1, 1) | group(sig("diag.add", 10), sig("diag.add", 20)) | sig("diag.echo"))()
    check(value(n2) == [12, 22], "chain with group | task")
    n3 = chain(sig("diag.add", 1, 1), chord([sig("diag.add", 10), sig("diag.add", 20)], sig("diag.echo")),
               sig("diag.echo"))()
    check(value(n3) == [12, 22], "chord inside a chain")
    out()


def mixed_chord():
    """A chord whose header runs partly on a Python worker (queue PY_QUEUE) and partly on
    Go workers fires its body exactly once."""
    pyq = os.environ["PY_QUEUE"]
    header = [sig("diag.add", i, i).set(queue=pyq if i % 2 else QUEUE) for i in range(8)]
    res = chord(header, sig("diag.echo").set(queue=QUEUE))()
    check(value(res) == [2 * i for i in range(8)], "mixed chord result")
    parts = res.parent.results  # the frozen header results
    check(len(parts) == len(header), "header results: %r" % parts)
    by_python = [p for p in parts if meta(p.id).get("worker")]
    check(0 < len(by_python) < len(parts), "header ran on both kinds of worker (%d by Python)" % len(by_python))
    out(body=res.id)


def send_eta():
    """Send one diag.echo with COUNTDOWN; print its id."""
    r = send("diag.echo", ("held",), countdown=float(os.environ["COUNTDOWN"]))
    out(id=r.id)


def wait_ids():
    """Wait for every id in IDS to be SUCCESS; print which worker wrote each result."""
    with open(os.environ["IDS"]) as f:
        ids = json.load(f)
    workers = {}
    for tid in ids:
        app.AsyncResult(tid).get(timeout=TIMEOUT)
        workers[tid] = meta(tid).get("worker")
    out(workers=workers)


if __name__ == "__main__":
    globals()[sys.argv[1]]()
