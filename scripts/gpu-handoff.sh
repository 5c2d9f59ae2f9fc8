#!/usr/bin/env bash
# P20's proof on the GPU machine, from the folder of the cuda binaries
# (memworker, memctl, model-server.py): two model servers on one GPU.
#
# A (priority 0, 62% of the GPU) runs under `memctl run --holder vllm`, its GPU work
# in an engine child process as vLLM's; B (priority 10, as much) starts with
# `memctl run --wait 2m` and cannot fit. The worker asks A to sleep (POST
# /sleep?level=1), verifies with NVML that A's process tree let go, grants
# B; B runs and exits; A is asked to wake up and holds its memory again.
# The timeline comes from the worker's events (memctl watch --allocations),
# the servers' own logs and nvidia-smi at each step. Writes to $OUT/handoff.
#
# BACKEND=sim and PYTHONPATH with a stand-in torch try the script's plumbing
# without a GPU (the sim sees no process memory: nothing to verify).
set -uo pipefail
out=${OUT:-$PWD/gpu-out}/handoff
mkdir -p "$out"
backend=${BACKEND:-cuda}
# Each server takes 62% of the GPU (50 GiB of an 80 GB H100, 86 GiB of an
# H200): the two never fit together.
total_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
size=${SIZE:-$(( ${total_mib:-81920} * 62 / 100 / 1024 ))GiB}
cycles=${CYCLES:-2}
python3 -c 'import torch' 2>/dev/null || { echo "no PyTorch here: skipped" | tee "$out/timeline.txt"; exit 0; }
port=4334
url=nats://127.0.0.1:$port
dev=gpu-gpu0
extra=()
[ "$backend" = sim ] && extra=(--sim-devices 1 --sim-memory 80GiB)
./memworker --backend "$backend" --node gpu --port $port --store-dir "$(mktemp -d)" "${extra[@]}" \
	--sample-interval 1s --log-level debug >"$out/worker.log" 2>&1 &
worker=$!
pids=("$worker")
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
mc=(./memctl --server "$url" -d $dev)
ctl() { "${mc[@]}" "$@"; }
for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.2; done
"${mc[@]}" watch --allocations --json >"$out/events.jsonl" 2>&1 &
pids+=($!)
smi() { # a labelled nvidia-smi snapshot
	{
		echo "--- $1 at $(date +%s.%N)"
		nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>&1
		nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader 2>&1
	} >>"$out/nvidia-smi.txt"
}
waitlog() { # file event [timeout s] [count]: until count JSON lines of that event show
	for _ in $(seq $((${3:-120} * 10))); do
		n=$(grep -c "\"event\": \"$2\"" "$1" 2>/dev/null)
		[ "${n:-0}" -ge "${4:-1}" ] && return 0
		sleep 0.1
	done
	echo "no $2 in $1" >&2
	return 1
}
smi "before"
"${mc[@]}" run --size "$size" --priority 0 --holder vllm --holder-url http://127.0.0.1:8101 --keep 1GiB -- \
	python3 model-server.py --port 8101 --bytes '{size_bytes}' --engine-child --name A --log "$out/a.jsonl" >"$out/a.out" 2>&1 &
a=$!
pids+=("$a")
waitlog "$out/a.jsonl" serving 180 || { tail -30 "$out/a.out"; exit 1; }
sleep 1.5 # past the telemetry's age: the reservation shows A's tree
smi "A loaded"
ctl --json allocations >"$out/allocations-a.json" 2>&1
for cycle in $(seq "$cycles"); do
	echo "{\"t\": $(date +%s.%N), \"server\": \"B\", \"event\": \"requested\", \"cycle\": $cycle}" >>"$out/b.jsonl"
	"${mc[@]}" run --size "$size" --wait 2m --priority 10 -- \
		python3 model-server.py --port 8102 --bytes '{size_bytes}' --exit-after 8 --name B --log "$out/b.jsonl" >>"$out/b.out" 2>&1 &
	b=$!
	sleep 1
	smi "cycle $cycle: B waiting, A asked to sleep"
	waitlog "$out/b.jsonl" serving 180 "$cycle" && smi "cycle $cycle: B loaded"
	wait $b
	echo "cycle $cycle: B exited with $?" >>"$out/b.out"
	smi "cycle $cycle: B exited"
	for _ in $(seq 600); do [ "$(grep -c '"wake_done"' "$out/a.jsonl")" -ge "$cycle" ] && break; sleep 0.1; done
	sleep 1.5
	smi "cycle $cycle: A woken"
	ctl --json allocations >"$out/allocations-cycle$cycle.json" 2>&1
done
ctl status >"$out/status.txt" 2>&1
kill "${pids[@]:1}" 2>/dev/null # memctl run relays the stop to A
for _ in $(seq 300); do kill -0 "$a" 2>/dev/null || break; sleep 0.1; done # A frees its pinned memory
kill "$worker"
wait 2>/dev/null
echo "brokered handoff on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "$backend")" >"$out/timeline.txt"
python3 - "$out" <<'EOF' | tee -a "$out/timeline.txt"
import json, sys, os
out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.startswith("{")] if os.path.exists(p) else []
from datetime import datetime
def ts(s):  # RFC 3339 with nanoseconds
    s = s.replace("Z", "+00:00")
    if "." in s:
        head, frac = s.split(".", 1)
        digits = "".join(c for c in frac if c.isdigit())
        s = head + "." + digits[:6] + frac[len(digits):]
    return datetime.fromisoformat(s).timestamp()
a, b, evs = lines("a.jsonl"), lines("b.jsonl"), lines("events.jsonl")
reclaims = [(ts(e["data"]["observed_at"]), e["type"].split(".")[3], e["data"]) for e in evs if ".reclaim." in e["type"]]
import re
grants = [ts(m.group(1)) for m in re.finditer(r"reserved on \S+ at (\S+), after waiting", open(os.path.join(out, "b.out")).read())]
requested = [x["t"] for x in b if x["event"] == "requested"]
b_started = [x["at"] for x in b if x["event"] == "process_started"]
b_exit = [x["t"] for x in b if x["event"] == "exiting"]
sleeps = [x for x in a if x["event"] == "sleep_done"]
sleep_starts = [x["t"] for x in a if x["event"] == "sleep_start"]
wakes = [x for x in a if x["event"] == "wake_done"]
for i, t0 in enumerate(requested):
    print(f"\ncycle {i + 1} (seconds from B's request)")
    rows = []
    row = lambda what, t: rows.append((t - t0, what))
    ev = [r for r in reclaims if r[0] >= t0 and (i + 1 >= len(requested) or r[0] < requested[i + 1])]
    for t, kind, d in ev:
        extra = ""
        if kind == "completed":
            extra = f" (released {d.get('bytes_released', 0) / 2**30:.1f} GiB: {d.get('release_seconds', 0):.3f} s to answer, {d.get('verify_seconds', 0):.3f} s to verify)"
        if kind == "requested":
            extra = f" ({d.get('bytes_wanted', 0) / 2**30:.1f} GiB wanted from priority {d.get('priority', 0)} for priority {d.get('waiter_priority', 0)})"
        if kind == "failed":
            extra = f" ({d.get('reason')})"
        row(f"reclaim.{kind}{extra}", t)
    if i < len(sleep_starts):
        row("A: sleep starts", sleep_starts[i])
    if i < len(sleeps):
        s = sleeps[i]
        row(f"A: asleep after {s['seconds']:.3f} s (pin {s['pin_seconds']:.3f}, copy {s['copy_seconds']:.3f} at {s['copy_gbps']:.1f} GB/s, free {s['free_seconds']:.3f})", s["t"])
    if i < len(grants):
        row("B: granted (memctl run)", grants[i])
    if i < len(b_started):
        row("B: its process starts", b_started[i])
    if i < len(b_exit):
        row("B: exits", b_exit[i])
    if i < len(wakes):
        w = wakes[i]
        row(f"A: awake after {w['seconds']:.3f} s (weights intact: {w['weights_intact']})", w["t"])
    for dt, what in sorted(rows):
        print(f"  {dt:8.3f}  {what}")
    if i < len(grants) and i < len(sleeps):
        latency = grants[i] - t0
        print(f"  handoff latency (B's request to B's grant) {latency:.3f} s; A's own sleep {sleeps[i]['seconds']:.3f} s;"
              f" target <= sleep + 0.5 s: {'met' if latency <= sleeps[i]['seconds'] + 0.5 else 'NOT met'}")
EOF
