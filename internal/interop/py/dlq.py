"""Python side of the dead-letter interop tests (run with /usr/bin/python3).

As a Celery app (`celery -A dlq worker`, PYTHONPATH=py): a Python worker whose task
dlq.reject raises Reject(requeue=False) under acks_late, which RabbitMQ dead-letters through
the policy `fleetctl dlq setup` applies.
    Environment: FLEET_PY_BROKER.

As a script (`dlq.py send`): sends the tasks of TASKS (a JSON list of [name, args]) to
QUEUE through BROKER, with results in BACKEND, and prints {"ok": true, "ids": [...]}.
"""
import json
import os
import sys

from celery import Celery
from celery.exceptions import Reject

app = Celery("dlq", broker=os.environ.get("FLEET_PY_BROKER") or os.environ.get("BROKER"),
             backend=os.environ.get("BACKEND") or None)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_transport_options={"visibility_timeout": 3600},
)


@app.task(name="dlq.reject", acks_late=True)
def reject(reason):
    raise Reject(reason, requeue=False)


def send():
    queue = os.environ["QUEUE"]
    ids = []
    for name, args in json.loads(os.environ["TASKS"]):
        ids.append(app.send_task(name, args=args, queue=queue).id)
    print(json.dumps({"ok": True, "ids": ids}))


if __name__ == "__main__":
    {"send": send}[sys.argv[1]]()
