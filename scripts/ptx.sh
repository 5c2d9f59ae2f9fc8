#!/usr/bin/env bash
# Compiles the cuda backend's kernels to PTX, which the backend embeds and
# the driver compiles for the GPU at load. Needs nvcc: run it on the GPU
# machine (scripts/gpu-pass.sh ptx does, writing the PTX to $OUT) and
# commit the result. compute_75 PTX (the oldest CUDA 13 targets) loads on Turing and every GPU since.
set -euo pipefail
src=${1:-worker/device/cuda/kernels}
out=${2:-$src}
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
for cu in "$src"/*.cu; do
	"$nvcc" -ptx -O3 -arch=compute_75 -o "$out/$(basename "${cu%.cu}").ptx" "$cu"
done
