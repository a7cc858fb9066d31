# syntax=docker/dockerfile:1
# The fleet image: every binary (worker, autoscaler, fleetctl, loadtest) statically linked, on
# distroless "static" as the nonroot user (65532). Build: `make image` (IMAGE=… VERSION=…).
# No shell or curl: the chart's preStop (`fleetctl drain`) and helm test (`fleetctl ping`) exec
# fleetctl from /usr/local/bin.

ARG GO_VERSION=1.26
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
# Modules first, so that source edits reuse the download layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY cmd ./cmd
COPY internal ./internal
COPY loadtest ./loadtest
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH=amd64
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build \
      -ldflags "-s -w -X denis.io/fleet/internal/workercli.Version=${VERSION} -X denis.io/fleet/internal/fleetctl.Version=${VERSION} -X denis.io/fleet/internal/autoscale/cli.Version=${VERSION}" \
      -o /out/ ./cmd/...

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="fleet" \
      org.opencontainers.image.description="Go Celery workers, autoscaler and fleetctl" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://denis.io/fleet"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 9808
ENTRYPOINT ["/usr/local/bin/worker"]
