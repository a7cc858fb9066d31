// Package interop holds the end-to-end tests that prove the Go worker is indistinguishable
// from a Python Celery worker: real Python Celery 5.x (Debian's python3-celery, run with
// /usr/bin/python3) produces tasks and reads results, the real worker binary runs them on
// real RabbitMQ and Redis, and the tests kill, stop and cut it to show nothing is lost.
// The package has no non-test code besides this comment and the Python scripts in py/.
package interop
