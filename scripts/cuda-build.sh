#!/usr/bin/env bash
# Builds the cuda-tagged worker and test binaries into bin/cuda/ (git-ignored)
# for the GPU machine: carry bin/cuda there and run them (see README, "Real
# GPUs").
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
. scripts/cuda-env.sh
mkdir -p bin/cuda
go vet -tags cuda ./worker/device/cuda/ ./integration/
strip=(-ldflags="-s -w")
go build -tags cuda "${strip[@]}" -o bin/cuda/memworker ./cmd/memworker
go build -tags cuda "${strip[@]}" -o bin/cuda/membench ./cmd/membench
go build "${strip[@]}" -o bin/cuda/memctl ./cmd/memctl
go build "${strip[@]}" -o bin/cuda/nats-server github.com/nats-io/nats-server/v2 # a standalone server (scripts/processes.sh)
go test -c -tags cuda "${strip[@]}" -o bin/cuda/cuda.test ./worker/device/cuda
go test -c -tags cuda "${strip[@]}" -o bin/cuda/integration.test ./integration
go test -c "${strip[@]}" -o bin/cuda/crc32c.test ./worker/crc32c
# Test data the integration tests read relative to their folder.
mkdir -p bin/docs && cp docs/nats-server.conf docs/accounts.conf docs/asyncapi.yaml bin/docs/
cp scripts/gpu-coordinate.sh scripts/gpu-handoff.sh scripts/gpu-cache.sh scripts/model-server.py scripts/fault-probe.py scripts/register-beside-copy.py scripts/processes.sh bin/cuda/
# The device tool carries at most 64 MiB: ship one compressed archive; run
# the binaries from its cuda/ folder.
tar -C bin -czf bin/cuda.tgz cuda docs
ls -la bin/cuda bin/cuda.tgz
