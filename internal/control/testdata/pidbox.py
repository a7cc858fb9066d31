"""Drive a node's remote control with Celery's own client (run with /usr/bin/python3).

Environment: BROKER, HOST (the node name), QUEUE, PREFIX (Redis global_keyprefix or "").
Prints one JSON object with the replies the Go test checks.
"""
import json
import os
import time

from celery import Celery

app = Celery("pidboxtest", broker=os.environ["BROKER"])
if os.environ.get("PREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["PREFIX"]}
HOST, QUEUE = os.environ["HOST"], os.environ["QUEUE"]
out = {}
insp = app.control.inspect(destination=[HOST], timeout=5)
for name in ("ping", "stats", "active_queues", "registered", "revoked", "conf", "clock", "report", "scheduled", "reserved"):
    out[name] = (getattr(insp, name)() or {}).get(HOST)

# A running task: active (with safe reprs, as Flower asks), then revoke --terminate.
res = app.send_task("diag.sleep", args=[30], queue=QUEUE)
deadline = time.time() + 30
active = []
while time.time() < deadline and not active:
    active = (app.control.inspect(destination=[HOST], timeout=2).active(safe=True) or {}).get(HOST) or []
    time.sleep(0.2)
out["active"] = active
out["query_task"] = (insp.query_task(res.id) or {}).get(HOST)
out["revoke_terminate"] = app.control.revoke(res.id, terminate=True, reply=True, destination=[HOST], timeout=5)
# A queued task revoked before it arrives is never run.
out["revoke_queued"] = app.control.revoke("not-yet-sent", reply=True, destination=[HOST], timeout=5)
out["hello"] = app.control.broadcast("hello", arguments={"from_node": "peer@elsewhere", "revoked": {"from-peer": [1.0, "from-peer"]}},
                                     reply=True, destination=[HOST], timeout=5)
out["hello_self"] = app.control.broadcast("hello", arguments={"from_node": HOST, "revoked": {}}, reply=True, destination=[HOST], timeout=5)
out["disable_events"] = app.control.disable_events(reply=True, destination=[HOST], timeout=5)
out["enable_events"] = app.control.enable_events(reply=True, destination=[HOST], timeout=5)
out["no_such"] = app.control.broadcast("no_such_cmd", reply=True, destination=[HOST], timeout=5)
out["shutdown"] = app.control.broadcast("shutdown", reply=True, destination=[HOST], timeout=5)
out["glob"] = app.control.ping(pattern=HOST.split("@")[0] + "@*", matcher="glob", timeout=3)
out["other"] = app.control.ping(destination=["nobody@nowhere"], timeout=1)
print(json.dumps(out))
