#!/usr/bin/python3
"""Capture golden Celery task messages for internal/protocol's tests.

Run from the repository root with the Debian Python (Celery 5.2.6, kombu 5.2.4):

    /usr/bin/python3 internal/protocol/testdata/capture_golden.py

Needs Redis on 127.0.0.1:6379 (uses DB 14 only) and RabbitMQ on 127.0.0.1:5672
(guest/guest, vhost /). Every case publishes with real `send_task`/`apply_async`/canvas
calls to its own uniquely named queue, reads the messages back without a worker, and
deletes everything it created (queues, exchanges, kombu binding sets, chord keys).

Files written (all JSON, 2-space indented, keys sorted):

testdata/golden/redis/<case>.json and testdata/golden/amqp/<case>.json:
    {
      "case":        case name,
      "broker":      "redis" | "amqp",
      "description": what the Python side did,
      "call":        the Python expression that produced the messages,
      "celery":      Celery version, "kombu": kombu version,
      "sent_at":     UTC time (isoformat, +00:00) taken just before sending,
      "queue":       the queue name used (random per run),
      "messages":    [message, ...] in publish order
    }
  A Redis message is {"key": <the list key it was read from>, "raw": <the list element,
  i.e. kombu's JSON envelope, exactly as stored>}.
  An AMQP message (read with py-amqp basic_get) is
    {"exchange": str, "routing_key": str, "redelivered": bool,
     "properties": {basic properties except application_headers; absent ones omitted},
     "headers": application_headers (Python None -> null),
     "body_base64": base64 of the raw body bytes}.

testdata/golden/saferepr_random.json: a list of
    {"json": json.dumps(value), "maxlen": n, "repr": repr(value),
     "saferepr_args": saferepr(tuple(value) if list else (value,), n),
     "saferepr_kwargs": saferepr({"v": value}, n)}
  for random JSON values (fixed seed, so re-runs write the same file), value as below.

testdata/golden/json_dumps.json: a list of
    {"name": str,
     "json": json.dumps(value)                       (default arguments),
     "repr": repr(value),
     "saferepr_args": celery saferepr(tuple(value) if list else (value,), 1024),
     "saferepr_kwargs": celery saferepr({"v": value}, 1024)}
  where value = json.loads(json.dumps(original, sort_keys=True)) so dict order is sorted
  (Go maps have no order) and every value is exactly what the JSON text denotes.
"""

import base64
import datetime
import json
import os
import sys
import time
import uuid

import amqp
import celery
import kombu
import redis
from celery import Celery, chain, chord, group
from celery.utils.saferepr import saferepr

REDIS_DB = 14
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "golden")
RUN = uuid.uuid4().hex[:8]
SEP = "\x06\x16"


def make_app(broker, **conf):
    app = Celery("fleet_golden", broker=REDIS_URL if broker == "redis" else AMQP_URL,
                 backend=REDIS_URL, set_as_current=False)
    app.conf.update(
        accept_content=["json", "pickle", "yaml"],
        broker_connection_retry_on_startup=False,
        **conf,
    )

    @app.task(name="fleet.add")
    def add(x, y):
        return x + y

    @app.task(name="fleet.tsum")
    def tsum(xs):
        return sum(xs)

    @app.task(name="fleet.log_result")
    def log_result(x):
        return x

    @app.task(name="fleet.on_err")
    def on_err(task_id):
        return task_id

    @app.task(name="fleet.echo")
    def echo(*args, **kwargs):
        return args, kwargs

    return app


# Each case: name -> (description, call source, function(app, queue) -> number of messages,
#                     extra app config)
def case_v2_plain(app, q):
    app.send_task("fleet.add", args=(2, 3), kwargs={"scale": 10}, queue=q)
    return 1


def case_v2_unicode_nested(app, q):
    app.send_task("fleet.echo", queue=q, args=(
        "héllo wörld", "日本語", "😀 emoji", "quote's \"dq\" back\\slash\nnl\ttab\x7f\x01",
    ), kwargs={
        "nested": {"a": [1, 2.5, {"b": None, "c": True, "d": False}], "big": 2 ** 70,
                   "neg": -1e-7, "e16": 1e16, "f": 1.0, "zero": -0.0},
        "empty": {}, "list": [], "ü": "ключ",
    })
    return 1


def case_v2_nan_inf(app, q):
    app.send_task("fleet.echo", args=(float("nan"), float("inf"), float("-inf"), 0.1),
                  kwargs={"x": float("nan")}, queue=q)
    return 1


def case_v1(app, q):
    app.send_task("fleet.add", args=(2, 3), kwargs={"scale": 10}, countdown=30, expires=120,
                  link=app.signature("fleet.log_result"), queue=q)
    return 1


def case_countdown(app, q):
    app.send_task("fleet.add", args=(2, 3), countdown=30, queue=q)
    return 1


def case_expires(app, q):
    app.send_task("fleet.add", args=(2, 3), expires=120, queue=q)
    return 1


def case_link(app, q):
    app.signature("fleet.add", args=(2, 3)).apply_async(
        link=app.signature("fleet.log_result"),
        link_error=app.signature("fleet.on_err"), queue=q)
    return 1


def case_chain(app, q):
    chain(app.signature("fleet.add", args=(1, 2)), app.signature("fleet.add", args=(3,)),
          app.signature("fleet.add", args=(4,))).apply_async(queue=q)
    return 1


def case_group(app, q):
    group(app.signature("fleet.add", args=(i, i)) for i in range(3)).apply_async(queue=q)
    return 3


def case_chord(app, q):
    chord([app.signature("fleet.add", args=(i, 1)) for i in range(3)],
          app.signature("fleet.tsum")).apply_async(queue=q)
    return 3


def case_priority(app, q):
    app.send_task("fleet.add", args=(2, 3), priority=7, queue=q)
    return 1


def case_timelimit(app, q):
    app.send_task("fleet.add", args=(2, 3), time_limit=10, soft_time_limit=5, queue=q)
    return 1


def case_extras(app, q):
    app.send_task("fleet.add", args=(2, 3), shadow="fleet.add_shadow", ignore_result=True,
                  eta=datetime.datetime(2030, 1, 2, 3, 4, 5, 123456,
                                        tzinfo=datetime.timezone.utc),
                  headers={"x_trace": "abc", "stamps": {"s1": ["v1"]},
                           "stamped_headers": ["s1"], "replaced_task_nesting": 1},
                  queue=q)
    return 1


def case_gzip(app, q):
    app.send_task("fleet.add", args=(2, 3), kwargs={"scale": 10}, compression="gzip", queue=q)
    return 1


def case_pickle(app, q):
    app.send_task("fleet.add", args=(2, 3), serializer="pickle", queue=q)
    return 1


def case_yaml(app, q):
    app.send_task("fleet.add", args=(2, 3), serializer="yaml", queue=q)
    return 1


CASES = [
    ("v2_plain", "protocol 2, plain args and kwargs",
     'send_task("fleet.add", args=(2, 3), kwargs={"scale": 10})', case_v2_plain, {}),
    ("v2_unicode_nested", "unicode, emoji, escapes, nested JSON, big int, float forms",
     "send_task(\"fleet.echo\", args=(unicode strings...), kwargs={nested...})",
     case_v2_unicode_nested, {}),
    ("v2_nan_inf", "NaN and Infinity float arguments (Python writes them bare)",
     'send_task("fleet.echo", args=(nan, inf, -inf, 0.1), kwargs={"x": nan})',
     case_v2_nan_inf, {}),
    ("v1", "protocol 1 (task_protocol=1) with countdown, expires and link",
     'send_task("fleet.add", args=(2, 3), kwargs={"scale": 10}, countdown=30, expires=120, '
     'link=signature("fleet.log_result"))', case_v1, {"task_protocol": 1}),
    ("countdown", "countdown=30 becomes an eta header",
     'send_task("fleet.add", args=(2, 3), countdown=30)', case_countdown, {}),
    ("expires", "numeric expires=120: expires header and expiration property",
     'send_task("fleet.add", args=(2, 3), expires=120)', case_expires, {}),
    ("link", "link and link_error callbacks in the embed",
     'signature("fleet.add", args=(2, 3)).apply_async(link=signature("fleet.log_result"), '
     'link_error=signature("fleet.on_err"))', case_link, {}),
    ("chain", "first message of a three-step chain",
     'chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()', case_chain, {}),
    ("group", "three group members", "group(add.s(i, i) for i in range(3)).apply_async()",
     case_group, {}),
    ("chord", "three chord header tasks with the body in the embed",
     "chord([add.s(i, 1) for i in range(3)], tsum.s()).apply_async()", case_chord, {}),
    ("priority", "priority=7 (Redis: the \\x06\\x166 sub-queue)",
     'send_task("fleet.add", args=(2, 3), priority=7)', case_priority,
     {"task_queue_max_priority": 10}),
    ("timelimit", "time_limit=10, soft_time_limit=5 -> timelimit [10, 5]",
     'send_task("fleet.add", args=(2, 3), time_limit=10, soft_time_limit=5)', case_timelimit, {}),
    ("extras", "shadow, ignore_result, explicit eta, custom and Celery>=5.3-style headers",
     'send_task("fleet.add", args=(2, 3), shadow="fleet.add_shadow", ignore_result=True, '
     'eta=datetime(2030,1,2,3,4,5,123456,utc), headers={"x_trace": "abc", "stamps": {"s1": ["v1"]}, '
     '"stamped_headers": ["s1"], "replaced_task_nesting": 1})', case_extras, {}),
    ("gzip", "compression='gzip' (a zlib stream)",
     'send_task("fleet.add", args=(2, 3), kwargs={"scale": 10}, compression="gzip")',
     case_gzip, {}),
    ("pickle", "serializer='pickle' (a Go worker must refuse it)",
     'send_task("fleet.add", args=(2, 3), serializer="pickle")', case_pickle, {}),
    ("yaml", "serializer='yaml' (a Go worker must refuse it)",
     'send_task("fleet.add", args=(2, 3), serializer="yaml")', case_yaml, {}),
]


def queue_name(case):
    return f"fleet_golden_{case}_{RUN}"


def capture_redis(app, q, want, r):
    keys = [q] + [q + SEP + str(p) for p in (3, 6, 9)]
    msgs = []
    deadline = time.time() + 10
    while time.time() < deadline:
        msgs = []
        for k in keys:
            # LPUSH puts the newest element first: reverse for publish order.
            for raw in reversed(r.lrange(k, 0, -1)):
                msgs.append({"key": k, "raw": raw.decode("utf-8")})
        if len(msgs) >= want:
            break
        time.sleep(0.05)
    if len(msgs) != want:
        raise RuntimeError(f"redis {q}: got {len(msgs)} messages, want {want}")
    return msgs


def capture_amqp(q, want, ch):
    msgs = []
    deadline = time.time() + 10
    while len(msgs) < want and time.time() < deadline:
        m = ch.basic_get(queue=q, no_ack=True)
        if m is None:
            time.sleep(0.05)
            continue
        props = {k: v for k, v in m.properties.items() if k != "application_headers"}
        body = m.body if isinstance(m.body, bytes) else m.body.encode("utf-8")
        msgs.append({
            "exchange": m.delivery_info.get("exchange", ""),
            "routing_key": m.delivery_info.get("routing_key", ""),
            "redelivered": bool(m.delivery_info.get("redelivered", False)),
            "properties": props,
            "headers": m.properties.get("application_headers") or {},
            "body_base64": base64.b64encode(body).decode("ascii"),
        })
    if len(msgs) != want:
        raise RuntimeError(f"amqp {q}: got {len(msgs)} messages, want {want}")
    return msgs


def group_ids(msgs, broker):
    ids = set()
    for m in msgs:
        h = json.loads(m["raw"])["headers"] if broker == "redis" else m["headers"]
        if h.get("group"):
            ids.add(h["group"])
    return ids


def cleanup_redis(r, q, gids):
    keys = [q, "_kombu.binding." + q] + [q + SEP + str(p) for p in (3, 6, 9)]
    for gid in gids:
        keys += [k.decode() for k in r.scan_iter(match=f"celery-taskset-meta-{gid}*")]
    r.delete(*keys)


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=True)
        f.write("\n")
    print("wrote", os.path.relpath(path))


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def run_broker(broker):
    r = redis.Redis.from_url(REDIS_URL)
    conn = None
    ch = None
    if broker == "amqp":
        conn = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest",
                               virtual_host="/")
        conn.connect()
        ch = conn.channel()
    try:
        for name, desc, call, fn, conf in CASES:
            app = make_app(broker, **conf)
            q = queue_name(name)
            gids = set()
            try:
                sent_at = now_iso()
                want = fn(app, q)
                if broker == "redis":
                    msgs = capture_redis(app, q, want, r)
                else:
                    msgs = capture_amqp(q, want, ch)
                gids = group_ids(msgs, broker)
                write(os.path.join(OUT, broker, name + ".json"), {
                    "case": name, "broker": broker, "description": desc, "call": call,
                    "celery": celery.__version__, "kombu": kombu.__version__,
                    "sent_at": sent_at, "queue": q, "messages": msgs,
                })
            finally:
                if broker == "amqp":
                    ch.queue_delete(q)
                    try:
                        ch.exchange_delete(q)
                    except amqp.exceptions.NotFound:
                        ch = conn.channel()
                # kombu binding sets (Redis broker) and chord size keys (the Redis result
                # backend, also used with RabbitMQ) live in DB 14.
                cleanup_redis(r, q, gids)
                app.close()
    finally:
        if conn is not None:
            conn.close()
        r.close()


JSON_VALUES = [
    ("ints", [0, 1, -1, 42, 2 ** 53 + 1, 2 ** 70, -(2 ** 64)]),
    ("floats", [0.0, -0.0, 1.0, 0.1, 1.5, 100.0, 1e15, 1e16, 1.2345678901234567e17, 1e-4,
                1e-5, 1.5e-7, 3.141592653589793, 1e300, 5e-324, 123456.789]),
    ("nonfinite", [float("nan"), float("inf"), float("-inf")]),
    ("bools_none", [True, False, None]),
    ("ascii_escapes", "quote\" back\\slash /slash \b\f\n\r\t \x00\x01\x1f\x7f end"),
    ("unicode", "héllo wörld ключ 日本語 \u00a0 \u2028 \ufeff"),
    ("astral", "emoji 😀 🎉 𝄞 end"),
    ("nested", {"a": [1, {"b": [2, {"c": [3, {"d": None}]}]}], "e": {}, "f": [], "g": "x"}),
    ("keys_unicode", {"ü": 1, "a": 2, "Z": 3, "日": 4, "😀": 5}),
    ("empty_string", ""),
    ("empty_list", []),
    ("empty_dict", {}),
    ("mixed_list", [1, "two", 3.0, None, True, [], {}, {"k": "v"}]),
    ("quotes_for_repr", ["it's", 'say "hi"', "both ' and \"", "tab\tnl\n", "back\\slash"]),
    ("long_list", list(range(400))),
    ("long_string", "word " * 300),
    ("long_nospace", "x" * 1100),
    ("deep", [[[[[1, [2]]]]]]),
    ("dict_deep", {"a": {"b": {"c": {"d": {"e": 1}}}}}),
    ("many_strings", ["s%03d %s" % (i, "y" * 20) for i in range(60)]),
    ("long_dict", {"k%03d" % i: "v" * 30 for i in range(40)}),
    # Different token lengths make saferepr's 1024-character cut land on different tokens
    # (an opening bracket, a closing one, a separator, a value).
    ("cut_pairs", [[i, i] for i in range(300)]),
    ("cut_singles", [[1000 + i] for i in range(300)]),
    ("cut_dicts", [{"k": i} for i in range(300)]),
    ("cut_nested", [[[i], "ab"] for i in range(300)]),
    ("cut_exact", ["x" * 1018]),
    ("cut_exact2", ["x" * 1019]),
    ("cut_unicode", ["ü" * 600, "日本" * 300]),
    ("bools_long", [True, False, None] * 120),
]


def dump_json_values():
    out = []
    for name, original in JSON_VALUES:
        value = json.loads(json.dumps(original, sort_keys=True))
        args = tuple(value) if isinstance(value, list) else (value,)
        out.append({
            "name": name,
            "json": json.dumps(value),
            "repr": repr(value),
            "saferepr_args": saferepr(args, 1024),
            "saferepr_kwargs": saferepr({"v": value}, 1024),
        })
    write(os.path.join(OUT, "json_dumps.json"), out)


def random_value(rnd, depth):
    r = rnd.random()
    if depth > 3 or r < 0.35:
        return rnd.choice([
            rnd.randint(-10 ** 6, 10 ** 6),
            rnd.random() * 10 ** rnd.randint(-8, 20),
            "w" * rnd.randint(0, 40) + " x" * rnd.randint(0, 5),
            "q'\"\n\\", None, True, False,
            "é日😀" * rnd.randint(0, 5),
        ])
    if r < 0.7:
        return [random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 5))]
    return {"k%d" % i + "y" * rnd.randint(0, 5): random_value(rnd, depth + 1)
            for i in range(rnd.randint(0, 5))}


def dump_saferepr_random():
    import random
    rnd = random.Random(7)
    out = []
    for _ in range(300):
        value = json.loads(json.dumps(random_value(rnd, 0), sort_keys=True))
        n = rnd.choice([10, 30, 60, 100, 200, 1024])
        args = tuple(value) if isinstance(value, list) else (value,)
        out.append({"json": json.dumps(value), "maxlen": n, "repr": repr(value),
                    "saferepr_args": saferepr(args, n), "saferepr_kwargs": saferepr({"v": value}, n)})
    write(os.path.join(OUT, "saferepr_random.json"), out)


def main():
    if celery.__version__ != "5.2.6":
        print(f"warning: Celery {celery.__version__}, fixtures document 5.2.6", file=sys.stderr)
    dump_json_values()
    dump_saferepr_random()
    for broker in ("redis", "amqp"):
        run_broker(broker)


if __name__ == "__main__":
    main()
