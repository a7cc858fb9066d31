"""A Python Celery app with the same diag.* tasks as the Go worker.

Used by the interop tests (a Python worker in a mixed fleet) and by `make bench-compare`
(the Python baseline). Configure with the environment:
  FLEET_PY_BROKER, FLEET_PY_BACKEND (default: none), FLEET_PY_VISIBILITY_TIMEOUT (seconds).
"""
import os
import time

from celery import Celery

app = Celery("diagapp", broker=os.environ.get("FLEET_PY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
             backend=os.environ.get("FLEET_PY_BACKEND") or None)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ.get("FLEET_PY_PREFETCH", "4")),
    broker_transport_options={"visibility_timeout": float(os.environ.get("FLEET_PY_VISIBILITY_TIMEOUT", "3600"))},
    task_ignore_result=not os.environ.get("FLEET_PY_BACKEND"),
    worker_hijack_root_logger=False,
)


@app.task(name="diag.add")
def add(x, y):
    return x + y


@app.task(name="diag.echo")
def echo(value):
    return value


@app.task(name="diag.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="diag.cpu")
def cpu(ms):
    end = time.monotonic() + ms / 1000.0
    while time.monotonic() < end:
        pass
    return ms


@app.task(name="diag.fail")
def fail(message):
    raise RuntimeError(message)
