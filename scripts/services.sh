#!/usr/bin/env bash
# Makes sure everything the tests and `make run` need is present and running on this machine,
# idempotently: RabbitMQ on 127.0.0.1:5672 (management API on :15672), Redis on
# 127.0.0.1:6379, Debian's Python Celery (python3-celery) for /usr/bin/python3, and
# promtool (Debian's prometheus package). Installs from Debian's packages only when
# something is missing; starts a server only when its port is closed.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Redis
if ! port_open 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  log "starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 50); do port_open 6379 && break; sleep 0.2; done
fi
port_open 6379 || { log "redis did not come up on 127.0.0.1:6379"; exit 1; }

# RabbitMQ
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 120); do port_open 5672 && break; sleep 0.5; done
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
port_open 5672 || { log "rabbitmq did not come up on 127.0.0.1:5672"; exit 1; }

# RabbitMQ management API on 127.0.0.1:15672 (fleetctl dlq lists queues and applies its
# dead-letter policy through it); the plugin ships with Debian's rabbitmq-server.
if ! port_open 15672; then
  log "enabling rabbitmq_management"
  rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 || true
  for _ in $(seq 60); do port_open 15672 && break; sleep 0.5; done
fi
port_open 15672 || log "warning: RabbitMQ management API not up on 127.0.0.1:15672 (the DLQ setup tests fall back to rabbitmqctl)"

# promtool (Debian's prometheus package) for the alert rule tests
command -v promtool >/dev/null || apt_install prometheus
command -v promtool >/dev/null || { log "promtool missing (package prometheus)"; exit 1; }

# Python Celery (Debian's, for /usr/bin/python3)
if ! /usr/bin/python3 -c 'import celery, kombu, redis, amqp' 2>/dev/null; then
  apt_install python3-celery python3-redis python3-amqp
fi
/usr/bin/python3 -c 'import celery' || { log "python3-celery missing"; exit 1; }

log "ready: redis 127.0.0.1:6379, rabbitmq 127.0.0.1:5672, celery $(/usr/bin/python3 -c 'import celery; print(celery.__version__)')"
