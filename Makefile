# fleet: Go workers for a Python Celery deployment.
#   make run    build and run one worker on the local RabbitMQ (results in local Redis)
#   make test   every test (starts/installs what the tests need first)

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X denis.io/fleet/internal/workercli.Version=$(VERSION) -X denis.io/fleet/internal/fleetctl.Version=$(VERSION)
TOOLS_DIR ?= $(HOME)/.cache/fleet-tools
STATICCHECK_VERSION := v0.8.2
BROKER    ?= amqp://guest:guest@127.0.0.1:5672//
BACKEND   ?= redis://127.0.0.1:6379/0

.PHONY: all build run test test-go lint vet services golden bench-compare loadtest clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

services:
	@bash scripts/services.sh

run: build services
	$(BIN)/worker -b '$(BROKER)' --result-backend '$(BACKEND)' -Q celery --log-format json

test: services vet lint test-go

vet:
	@test -z "$$(gofmt -l cmd internal loadtest 2>/dev/null)" || { echo "gofmt needed:"; gofmt -l cmd internal loadtest; exit 1; }
	$(GO) vet ./...

lint:
	@test -x $(TOOLS_DIR)/bin/staticcheck || GOBIN=$(TOOLS_DIR)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(TOOLS_DIR)/bin/staticcheck ./...

test-go: build
	$(GO) test -race -count=1 -timeout 20m ./...

# Regenerate the golden messages from the real Python Celery on this machine.
golden: services
	/usr/bin/python3 internal/protocol/testdata/capture_golden.py

bench-compare: build services
	$(GO) run ./bench/compare

# Drive a step profile at 2x the expected rate through 3 local workers; prints the verdict
# and writes $(LOADTEST_OUT)/report.html.
LOADTEST_OUT ?= loadtest-out
loadtest: build services
	$(BIN)/loadtest -b '$(BROKER)' --result-backend '$(BACKEND)' -Q loadtest \
	  --profile step --expected-rate 10 --multiplier 2 --time-scale 5 \
	  --local-workers 3 --worker-concurrency 16 --out $(LOADTEST_OUT)

clean:
	rm -rf $(BIN) $(LOADTEST_OUT)
