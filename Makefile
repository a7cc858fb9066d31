# fleet: Go workers for a Python Celery deployment.
#   make run    build and run the fleet locally: the autoscaler supervising worker processes on the
#               local RabbitMQ (results and fleet state in local Redis), scaling 1..8 on queue depth
#   make test   every test (starts/installs what the tests need first)

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X denis.io/fleet/internal/workercli.Version=$(VERSION) -X denis.io/fleet/internal/fleetctl.Version=$(VERSION) \
             -X denis.io/fleet/internal/autoscale/cli.Version=$(VERSION)
TOOLS_DIR ?= $(HOME)/.cache/fleet-tools
STATICCHECK_VERSION := v0.8.2
BROKER    ?= amqp://guest:guest@127.0.0.1:5672//
BACKEND   ?= redis://127.0.0.1:6379/0

.PHONY: all build run run-worker test test-go test-e2e lint vet services k8s-tools chart-sync image golden bench-compare loadtest clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

services:
	@bash scripts/services.sh

RUN_QUEUES ?= celery
RUN_MAX    ?= 8
# The autoscaler's local target starts, drains and restarts the workers (same policy and
# signals as on Kubernetes); send tasks to $(RUN_QUEUES) and watch it scale. Ctrl-C drains all.
run: build services
	$(BIN)/autoscaler run --target local -b '$(BROKER)' -Q $(RUN_QUEUES) --min 1 --max $(RUN_MAX) \
	  --state-redis '$(BACKEND)' --result-backend '$(BACKEND)' --metrics-addr 127.0.0.1:9809 --log-format text \
	  --worker-cmd "$(BIN)/worker -c 4 --prefetch-multiplier 1 --result-backend $(BACKEND) --log-format text"

# One worker in the foreground, without the autoscaler.
run-worker: build services
	$(BIN)/worker -b '$(BROKER)' --result-backend '$(BACKEND)' -Q $(RUN_QUEUES) --log-format json

test: services vet lint test-go

vet:
	@test -z "$$(gofmt -l cmd internal loadtest bench deploy 2>/dev/null)" || { echo "gofmt needed:"; gofmt -l cmd internal loadtest bench deploy; exit 1; }
	$(GO) vet ./...

lint:
	@test -x $(TOOLS_DIR)/bin/staticcheck || GOBIN=$(TOOLS_DIR)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(TOOLS_DIR)/bin/staticcheck ./...

# The Kubernetes binaries (kube-apiserver, etcd, controller-manager, scheduler, kwok, helm)
# are built once into ~/.cache/fleet-tools and reused; a cold build takes minutes.
k8s-tools:
	@bash scripts/k8s-tools.sh >/dev/null

test-go: build k8s-tools
	$(GO) test -race -count=1 -timeout 25m ./...

# Only the tests that need the Kubernetes API server (also part of `make test`).
test-e2e: build services k8s-tools
	$(GO) test -race -count=1 -timeout 20m ./internal/testutil/kube/ ./deploy/helm/ ./internal/autoscale/e2e/

CHART := deploy/helm/fleet
IMAGE ?= ghcr.io/denis/fleet
chart-sync:
	cp deploy/prometheus/alerts.yaml $(CHART)/files/alerts.yaml

# No Docker engine runs on the development machines; this is for CI/CD hosts that have one.
image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) .

# Regenerate the golden messages from the real Python Celery on this machine.
golden: services
	/usr/bin/python3 internal/protocol/testdata/capture_golden.py

bench-compare: build services
	$(GO) run ./bench/compare $(BENCH_ARGS)

# Drive a step profile at 2x the expected rate through 3 local workers; prints the verdict
# and writes $(LOADTEST_OUT)/report.html.
LOADTEST_OUT ?= loadtest-out
loadtest: build services
	$(BIN)/loadtest -b '$(BROKER)' --result-backend '$(BACKEND)' -Q loadtest \
	  --profile step --expected-rate 10 --multiplier 2 --time-scale 5 \
	  --local-workers 3 --worker-concurrency 16 --out $(LOADTEST_OUT)

clean:
	rm -rf $(BIN) $(LOADTEST_OUT)
