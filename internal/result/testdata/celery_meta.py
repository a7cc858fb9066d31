"""Encode result documents with real Celery (5.2.6) for the Go tests to compare against.

Reads one JSON case per line on stdin, writes one line per case on stdout: the exact
document Celery's Redis backend would store (Backend._get_result_meta + Backend.encode),
with date_done pinned to the case's datetime, followed by a tab and the rpc:// body
(RPCBackend._to_result encoded the same way).
"""
import datetime
import importlib
import json
import sys
import types

from celery import Celery


def main():
    app = Celery(backend='redis://127.0.0.1:6379/0')
    backend = app.backend
    for line in sys.stdin:
        case = json.loads(line)
        app.conf.result_extended = case.get('extended') is not None
        state = case['status']
        result = case.get('result')
        if case.get('exc'):
            module, name, args = case['exc']
            exc = getattr(importlib.import_module(module), name)(*args)
            result = backend.encode_result(exc, state)
        req = types.SimpleNamespace(
            group=case.get('group_id'), parent_id=case.get('parent_id'), children=[])
        ext = case.get('extended')
        if ext is not None:
            req.task = ext['name']
            req.args = ext['args']
            req.kwargs = ext['kwargs']
            req.hostname = ext['worker']
            req.retries = ext['retries']
            req.delivery_info = {'routing_key': ext['queue']}
        meta = backend._get_result_meta(result=result, state=state,
                                        traceback=case.get('traceback'), request=req)
        meta['children'] = case.get('children', [])
        if meta['date_done'] is not None:
            meta['date_done'] = datetime.datetime(*case['date_done']).isoformat()
        meta['task_id'] = case['task_id']
        rpc = {'task_id': case['task_id'], 'status': state, 'result': result,
               'traceback': case.get('traceback'), 'children': case.get('children', [])}
        sys.stdout.write(backend.encode(meta) + '\t' + backend.encode(rpc) + '\n')


if __name__ == '__main__':
    main()
