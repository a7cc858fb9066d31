"""A Python Celery worker app for the task-semantics interop tests (mixed fleets).

Same diag.* task names as the Go worker. result_extended is on, so a result written by this
worker names it in its "worker" field (the Go worker does not write that field): the tests
use it to tell which worker ran a task. Configure with the environment:
  FLEET_PY_BROKER, FLEET_PY_BACKEND, FLEET_PY_VISIBILITY_TIMEOUT (seconds), FLEET_PY_QUEUE.
"""
import os
import time

from celery import Celery

app = Celery("semapp", broker=os.environ["FLEET_PY_BROKER"], backend=os.environ["FLEET_PY_BACKEND"])
app.conf.update(
    task_acks_late=True,
    result_extended=True,
    task_default_queue=os.environ.get("FLEET_PY_QUEUE", "celery"),
    broker_transport_options={"visibility_timeout": float(os.environ.get("FLEET_PY_VISIBILITY_TIMEOUT", "3600"))},
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
