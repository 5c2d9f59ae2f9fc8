#!/usr/bin/env bash
# P21 on the GPU machine, from the folder of the cuda binaries: memory a
# client of the worker frees goes back to the GPU after --cache-hold, so
# another process (PyTorch) can have it; with the hold off (-1s, the old
# behaviour) it stays cached and PyTorch runs out. Writes $OUT/cache.txt.
set -uo pipefail
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
log=$out/cache.txt
python3 -c 'import torch' 2>/dev/null || { echo "no PyTorch here: skipped" >"$log"; exit 0; }
size=${SIZE:-40GiB}
try() { # hold: free $size through the worker, wait, then PyTorch asks for it
	local hold=$1 port=4335
	./memworker --backend cuda --node gpu --port $port --store-dir "$(mktemp -d)" --cache-hold "$hold" \
		--sample-interval 1m >"$out/cache-worker-$hold.log" 2>&1 &
	local worker=$!
	local mc=(./memctl --server nats://127.0.0.1:$port -d gpu-gpu0)
	for _ in $(seq 100); do "${mc[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
	echo "=== --cache-hold $hold"
	id=$("${mc[@]}" --json alloc "$size" | python3 -c 'import json,sys; print(json.load(sys.stdin)["allocation_id"])')
	"${mc[@]}" free "$id"
	echo "freed $size at $(date +%T.%N)"
	nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
	sleep 2
	echo "2 s later:"
	nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
	"${mc[@]}" req get_pressure gpu-gpu0 | python3 -c 'import json,sys; r=json.load(sys.stdin); p=r.get("data", r); print("get_pressure available_bytes", p.get("available_bytes"), "pressure_ratio", p.get("pressure_ratio"))'
	python3 - "$size" <<'PY'
import sys, torch
n = int(sys.argv[1].removesuffix("GiB")) << 30
try:
    x = torch.empty(n, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    print(f"PyTorch got {n >> 30} GiB")
except torch.OutOfMemoryError as e:
    print("PyTorch:", str(e).splitlines()[0])
PY
	kill $worker
	wait $worker 2>/dev/null
}
{
	nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader
	try 1s
	try -1s
} >"$log" 2>&1
