"""Drive a node's run-time queue and limit commands with Celery's own client (run with
/usr/bin/python3): add_consumer, cancel_consumer, rate_limit, time_limit.

Environment: BROKER, BACKEND (Redis results), HOST (the node name), Q1 (consumed from the
start), Q2 (added, then cancelled), PREFIX (Redis global_keyprefix or ""), PREFETCH (the
node's prefetch; it runs one task at a time), SLEEP (seconds a filler task runs).

Every reply is printed next to the reply Celery 5.2's own handler gives for the same call
(celery.worker.control run against a stand-in worker state), so the Go test compares them.
Prints one JSON object.
"""
import json
import os
import time
import types

from celery import Celery
from celery.worker import control as panel

app = Celery("consumerstest", broker=os.environ["BROKER"], backend=os.environ["BACKEND"])
if os.environ.get("PREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["PREFIX"]}
HOST, Q1, Q2 = os.environ["HOST"], os.environ["Q1"], os.environ["Q2"]
PREFETCH, SLEEP = int(os.environ["PREFETCH"]), float(os.environ["SLEEP"])


# Stand-ins of the node's tasks, so that Celery's handlers know the names.
@app.task(name="diag.echo")
def _echo(value):
    return value


@app.task(name="diag.sleep")
def _sleep(seconds):
    return seconds


STATE = types.SimpleNamespace(app=app, consumer=types.SimpleNamespace(
    call_soon=lambda *a, **k: None, reset_rate_limits=lambda: None,
    add_task_queue=None, cancel_task_queue=None))


def celery_reply(method, **arguments):
    """What a Python worker replies: kombu's Node.dispatch around the Panel handler."""
    try:
        return panel.Panel.data[method](STATE, **arguments)
    except Exception as exc:  # noqa: BLE001 - kombu replies repr(exc) for any error
        return {"error": repr(exc)}


def mine(replies):
    return {k: v for r in (replies or []) for k, v in r.items()}.get(HOST)


def inspect(name):
    return (getattr(app.control.inspect(destination=[HOST], timeout=5), name)() or {}).get(HOST)


def ready(queue):
    """Ready messages in queue, from the broker: AMQP passive declare; Redis LLEN over the
    priority lists (kombu's passive declare checks EXISTS without the global_keyprefix)."""
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        if hasattr(ch, "_size"):
            return ch._size(queue)
        return ch.queue_declare(queue=queue, passive=True).message_count


out = {"cases": []}


def case(name, got, want):
    out["cases"].append({"name": name, "got": got, "want": want})


# add_consumer: the node consumes Q2 at once.
case("add_consumer", mine(app.control.add_consumer(Q2, reply=True, destination=[HOST], timeout=10)),
     celery_reply("add_consumer", queue=Q2, exchange=None, exchange_type="direct", routing_key=None))
case("add_consumer consumed", mine(app.control.add_consumer(Q1, reply=True, destination=[HOST], timeout=10)),
     celery_reply("add_consumer", queue=Q1, exchange=None, exchange_type="direct", routing_key=None))
case("add_consumer no queue", mine(app.control.broadcast("add_consumer", arguments={}, reply=True, destination=[HOST], timeout=10)),
     celery_reply("add_consumer"))
out["queues_added"] = sorted(q["name"] for q in inspect("active_queues") or [])
out["q2_queue"] = next((q for q in inspect("active_queues") or [] if q["name"] == Q2), None)
first = app.send_task("diag.add", args=(2, 3), queue=Q2)
out["q2_result"] = first.get(timeout=30)
first.forget()

# Fill the node from Q2: one running, PREFETCH-1 reserved, one left in the queue.
fillers = [app.send_task("diag.sleep", args=(SLEEP,), queue=Q2) for _ in range(PREFETCH + 1)]
deadline = time.time() + 20
active, reserved = [], []
while time.time() < deadline:
    active, reserved = inspect("active") or [], inspect("reserved") or []
    if len(active) == 1 and len(reserved) == PREFETCH - 1:
        break
    time.sleep(0.1)
out["filled"] = [len(active), len(reserved)]
running = active[0]["id"] if active else None

# cancel_consumer: the reserved ones go back to Q2 at once, the running one finishes.
case("cancel_consumer", mine(app.control.cancel_consumer(Q2, reply=True, destination=[HOST], timeout=20)),
     celery_reply("cancel_consumer", queue=Q2))
out["after_cancel"] = {"active": len(inspect("active") or []), "reserved": len(inspect("reserved") or []),
                       "ready": ready(Q2), "queues": sorted(q["name"] for q in inspect("active_queues") or [])}
case("cancel_consumer not consumed", mine(app.control.cancel_consumer("nope-" + Q2, reply=True, destination=[HOST], timeout=10)),
     celery_reply("cancel_consumer", queue="nope-" + Q2))
if running:
    out["running_result"] = app.AsyncResult(running).get(timeout=SLEEP + 30)
late = app.send_task("diag.add", args=(1, 1), queue=Q2)
time.sleep(2)
out["late_state"], out["ready_end"] = late.state, ready(Q2)
for r in fillers + [late]:
    r.forget()

# rate_limit: replies as Celery's, and the limit holds (1/s: 4 tasks take >= 3 s); once
# lifted, 8 tasks (>= 7 s at 1/s) take much less.
for name, task, rate in [("rate_limit set", "diag.echo", "1/s"), ("rate_limit bad number", "diag.echo", "abc"),
                         ("rate_limit bad unit", "diag.echo", "10/d"), ("rate_limit unknown task", "no.such.task", "1/s")]:
    case(name, mine(app.control.rate_limit(task, rate, reply=True, destination=[HOST], timeout=10)),
         celery_reply("rate_limit", task_name=task, rate_limit=rate))
t0 = time.time()
for r in [app.send_task("diag.echo", args=(i,), queue=Q1) for i in range(4)]:
    r.get(timeout=30)
    r.forget()
out["limited_s"] = time.time() - t0
case("rate_limit disable", mine(app.control.rate_limit("diag.echo", 0, reply=True, destination=[HOST], timeout=10)),
     celery_reply("rate_limit", task_name="diag.echo", rate_limit=0))
t0 = time.time()
for r in [app.send_task("diag.echo", args=(i,), queue=Q1) for i in range(8)]:
    r.get(timeout=30)
    r.forget()
out["unlimited_s"] = time.time() - t0

# time_limit: a diag.sleep longer than the new hard limit fails with TimeLimitExceeded,
# then one longer than a new soft limit with SoftTimeLimitExceeded.
case("time_limit hard", mine(app.control.time_limit("diag.sleep", hard=1, reply=True, destination=[HOST], timeout=10)),
     celery_reply("time_limit", task_name="diag.sleep", soft=None, hard=1))
case("time_limit unknown task", mine(app.control.time_limit("no.such.task", soft=1, hard=2, reply=True, destination=[HOST], timeout=10)),
     celery_reply("time_limit", task_name="no.such.task", soft=1, hard=2))


def outcome(res):
    t0 = time.time()
    try:
        res.get(timeout=30)
        kind = "SUCCESS"
    except Exception as exc:  # noqa: BLE001 - the exception type is what is checked
        kind = type(exc).__name__
    res.forget()
    return [kind, round(time.time() - t0, 1)]


out["hard_limited"] = outcome(app.send_task("diag.sleep", args=(20,), queue=Q1))
case("time_limit soft", mine(app.control.time_limit("diag.sleep", soft=0.5, reply=True, destination=[HOST], timeout=10)),
     celery_reply("time_limit", task_name="diag.sleep", soft=0.5, hard=None))
out["soft_limited"] = outcome(app.send_task("diag.sleep", args=(20,), queue=Q1))
print(json.dumps(out))
