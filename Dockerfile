# memworker images. Target sim (the default, last below): a static worker
# with the sim backend. Target cuda: the worker built with the cuda tag on NVIDIA's CUDA
# image, for hosts with GPUs (run with the NVIDIA container toolkit).

# Pinned to go.mod's go line: the image sets GOTOOLCHAIN=local, so an older
# Go refuses to build (TestDockerfileStagesBuild checks both).
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/memworker ./cmd/memworker

FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS cuda-build
COPY --from=build /usr/local/go /usr/local/go
ENV PATH=/usr/local/go/bin:$PATH
WORKDIR /src
# The golang image keeps GOPATH at /go; this image's GOPATH is /root/go.
COPY --from=build /go/pkg/mod /root/go/pkg/mod
COPY . .
RUN CGO_ENABLED=1 \
    CGO_CFLAGS="-I/src/worker/device/cuda/cuda13 -I/usr/local/cuda/include -Wno-deprecated-declarations" \
    CGO_LDFLAGS="-L/usr/local/cuda/lib64/stubs" \
    go build -tags cuda -trimpath -ldflags="-s -w" -o /out/memworker ./cmd/memworker

FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS cuda
COPY --from=cuda-build /out/memworker /usr/local/bin/memworker
ENTRYPOINT ["/usr/local/bin/memworker"]

# The last stage is the default target.
FROM gcr.io/distroless/static-debian12:nonroot AS sim
COPY --from=build /out/memworker /usr/local/bin/memworker
ENTRYPOINT ["/usr/local/bin/memworker"]
