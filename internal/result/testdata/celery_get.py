"""Wait for a task result the way a Python Celery client does, and report what get() gave.

Usage: celery_get.py <backend-url> <task-id> <timeout-seconds>
Prints one JSON line: {"value": <result>} or
{"exc_module": ..., "exc_type": ..., "args": [...]} when get() raised.
"""
import json
import sys

from celery import Celery
from celery.result import AsyncResult


def main():
    url, task_id, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    app = Celery(backend=url)
    try:
        value = AsyncResult(task_id, app=app).get(timeout=timeout)
        out = {'value': value}
    except Exception as exc:  # report whatever get() re-raised
        out = {'exc_module': type(exc).__module__, 'exc_type': type(exc).__name__,
               'args': list(exc.args)}
    sys.stdout.write(json.dumps(out) + '\n')


if __name__ == '__main__':
    main()
