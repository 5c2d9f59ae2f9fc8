# memworker images. Target sim (the default, last below): a static worker
# with the sim backend. Target cuda: the worker built with the cuda tag on NVIDIA's CUDA
# image, for hosts with GPUs (run with the NVIDIA container toolkit).

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/memworker ./cmd/memworker

FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS cuda-build
COPY --from=build /usr/local/go /usr/local/go
ENV PATH=/usr/local/go/bin:$PATH
WORKDIR /src
COPY --from=build /root/go/pkg/mod /root/go/pkg/mod
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
COPY --from=build /out/memworker /memworker
ENTRYPOINT ["/memworker"]
