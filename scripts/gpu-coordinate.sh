#!/usr/bin/env bash
# On the GPU machine, from the folder of the cuda binaries (memworker,
# memctl): a reservation for a real PyTorch process shows what nvidia-smi
# shows for it, and an allocate that waits is granted once that process
# exits and its reservation is freed. Writes coordinate.txt to $OUT.
set -uo pipefail
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
log=$out/coordinate.txt
python3 -c 'import torch' 2>/dev/null || { echo "no PyTorch here: skipped" >"$log"; exit 0; }
url=nats://127.0.0.1:4333
./memworker --backend cuda --node gpu --port 4333 --store-dir "$(mktemp -d)" --telemetry-max-age 100ms \
	--sample-interval 200ms >"$out/coordinate-worker.log" 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null' EXIT
sleep 4
ctl() { ./memctl --server "$url" -d gpu-gpu0 "$@"; }
# The model server: allocates 60 GiB 3 s after it starts, holds it 20 s.
python3 -c '
import time, torch
time.sleep(3)
x = torch.empty(60 << 30, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
time.sleep(20)
' &
pid=$!
{
	echo "model server pid $pid"
	ctl --json alloc 60GiB --type RESERVATION --pid "$pid" --ttl 5m >"$out/reservation.json"
	id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["allocation_id"])' "$out/reservation.json")
	echo "reservation $id for pid $pid"
	for _ in $(seq 100); do # until the process holds its memory
		used=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | awk -F', ' -v p="$pid" '$1==p {print $2}')
		[ -n "$used" ] && [ "$used" -gt 60000 ] && break
		sleep 0.2
	done
	sleep 0.5 # past the telemetry's max age
	echo "--- the reservation, as memctl lists it, and nvidia-smi for the pid:"
	ctl --json allocations | python3 -c '
import json, sys
for a in json.load(sys.stdin)["allocations"]:
    print("observed_bytes", a.get("observed_bytes"), "=", round(a.get("observed_bytes", 0) / 2**20), "MiB at", a.get("observed_at"))'
	nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | grep "^$pid"
	ctl status
	echo "--- an allocate of 40 GiB that waits for room:"
	start=$(date +%s.%N)
	( ctl alloc 40GiB --wait 60s --ttl 5m; echo "granted at $(date +%s.%N)" ) &
	waiter=$!
	sleep 1
	ctl status
	wait "$pid"
	echo "model server exited at $(date +%s.%N) (started waiting at $start)"
	ctl free "$id"
	echo "reservation freed at $(date +%s.%N)"
	wait "$waiter"
} >"$log" 2>&1
