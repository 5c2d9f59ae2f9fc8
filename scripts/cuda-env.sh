# Source this to build the cuda-tagged code here (no GPU needed): it points
# cgo at the wrapper header in the repo and at NVIDIA's cuda.h and link stub
# in .cuda/ (git-ignored; fetch them once from the GPU machine, see
# ../shared/GPU.md: cp /usr/local/cuda/include/cuda.h
# /usr/local/cuda/lib64/stubs/libcuda.so to .cuda/include and .cuda/lib).
root=$(git rev-parse --show-toplevel)
for f in "$root/.cuda/include/cuda.h" "$root/.cuda/lib/libcuda.so"; do
  [ -f "$f" ] || { echo "missing $f: fetch it from the GPU machine (scripts/cuda-env.sh says how)" >&2; return 1 2>/dev/null || exit 1; }
done
export CGO_ENABLED=1
export CGO_CFLAGS="-I$root/worker/device/cuda/cuda13 -I$root/.cuda/include -Wno-deprecated-declarations"
export CGO_LDFLAGS="-L$root/.cuda/lib"
