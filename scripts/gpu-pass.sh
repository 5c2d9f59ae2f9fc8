#!/usr/bin/env bash
# The GPU machine's test and bench pass. Build first with
# scripts/cuda-build.sh, carry bin/cuda.tgz, and run this there from the
# repository root; results go to $OUT (default ./gpu-out). Steps can be
# picked (default: cuda integration hostpath bench):
#   scripts/gpu-pass.sh cuda integration hostpath vmm handoff cache bench
# and the probes: cold coldpin coldparts besidecopy contexts hostpath-contexts
# colddrift hostvmm hybrid processes readhandlers oneclient recent since sinceall reader rounds readahead2 pairsim ahead benchcuda (what each measures is beside it below).
set -uo pipefail
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
work=$(mktemp -d)
tar -C "$work" -xzf bin/cuda.tgz
cd "$work/cuda"
steps=${*:-cuda integration hostpath bench}
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
lscpu >"$out/lscpu.txt" 2>&1
# Transparent huge pages decide how fast fresh pinned memory is faulted in.
grep -H . /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag /sys/devices/system/clocksource/clocksource0/current_clocksource >>"$out/lscpu.txt" 2>&1
step() { # name command...: run, keep the output, note the exit status
	local name=$1
	shift
	local t0=$SECONDS
	"$@" >"$out/$name.txt" 2>&1
	echo "$name: rc $? in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
	# Huge pages faulted, fallen back to small ones, compaction stalls: so far.
	echo "after $name: $(grep -E '^(thp_fault_alloc|thp_fault_fallback|compact_stall) ' /proc/vmstat | tr '\n' ' ')" >>"$out/summary.txt"
}
for s in $steps; do
	case $s in
	cuda) step cuda-test ./cuda.test -test.v -test.count 1 -test.bench . -test.benchmem ;;
	integration) step integration ./integration.test -test.v -test.count 1 -test.timeout 8m -test.bench PressureEventLatency ;;
	hostpath) # P15: pinning, pipelined copies, offload/restore and transfers to the host against raw
		step pin-copy env BENCH_PIN_BYTES=$((8 << 30)) ./cuda.test -test.run 'Pipelined|CopiesKeepContent|Checksum' -test.v -test.bench 'Pin|ColdD2H|Copy$|Pipelined'
		step offload-restore env BENCH_MODEL_BYTES=$((10 << 30)) ./integration.test -test.run XXX -test.bench OffloadRestore -test.benchtime 3x
		step transfer-to-host env BENCH_TRANSFER_BYTES=$((8 << 30)) ./integration.test -test.run XXX -test.bench 'TransferToHost|TransferVerify|PeerTransfer' -test.benchtime 3x
		;;
	vmm) # P16: pools on CUDA virtual memory: release without copying, cold and cached allocation against raw
		step vmm-test ./cuda.test -test.run 'VirtualMemory' -test.v -test.count 1
		step vmm-cold ./cuda.test -test.run XXX -test.bench 'ColdAlloc1GiB' -test.benchtime 30x -test.count 3
		step vmm-cached ./cuda.test -test.run XXX -test.bench 'AllocFree1MiB' -test.count 3
		step vmm-integration ./integration.test -test.v -test.count 1 -test.run 'Defragment|Recommendations|CoreOperations|Peer|Model' -test.timeout 5m
		;;
	handoff) # P20: two model servers, the worker brokers memory from the lower priority to the higher
		step handoff env OUT="$out" ./gpu-handoff.sh
		;;
	coldpin) # P21: what bounds page-locking fresh host memory, two ways, then cold copies and offloads by page size and threads
		step fresh-pages env BENCH_PIN_BYTES=$((8 << 30)) ./cuda.test -test.run XXX -test.bench FreshPages -test.benchtime 2x
		step fault-probe python3 ./fault-probe.py $((8 << 30))
		step cold-d2h env BENCH_PIN_BYTES=$((8 << 30)) ./cuda.test -test.run XXX -test.bench ColdD2H -test.benchtime 2x
		;;
	coldparts) # P21: cold copies without locking first (a bounce ring), then the pipeline by chunk and threads, then page-locking under a copy (last: it can stall)
		step bounce-d2h env BENCH_PIN_BYTES=$((8 << 30)) ./cuda.test -test.run XXX -test.bench BounceD2H -test.benchtime 2x
		step cold-d2h-variants env BENCH_PIN_BYTES=$((8 << 30)) BENCH_COLD_VARIANTS=1 ./cuda.test -test.run XXX -test.bench 'ColdD2H/(memworker|raw-warm)' -test.benchtime 2x
		step pin-under-copy timeout 240 ./cuda.test -test.run XXX -test.bench PinUnderCopy -test.benchtime 2x
		;;
	besidecopy) # P21: page-locking beside a pipelined copy: which gives way, in this process's driver or the device (two tools)
		step register-beside-copy ./cuda.test -test.run XXX -test.bench RegisterBesideCopy -test.benchtime 2x
		step register-beside-copy-torch python3 ./register-beside-copy.py
		;;
	contexts) # P21: registering on contexts of its own beside a copy, by threads and contexts; then the pipeline so
		step register-contexts ./cuda.test -test.run XXX -test.bench RegisterContexts -test.benchtime 2x
		step cold-d2h-contexts env BENCH_PIN_BYTES=$((8 << 30)) BENCH_COLD_WAYS=1 ./cuda.test -test.run XXX -test.bench 'ColdD2H/(memworker-own|raw-warm)' -test.benchtime 2x
		step pinned-contexts-test ./cuda.test -test.run 'PinnedSegmentsShare' -test.v
		;;
	cold) # P21: the cold host path alone, default settings (name the pass with PASS=-1, -2, ... to run it again on the same machine): the pipeline, then a 10 GiB offload and an 8 GiB transfer to host, each a fresh worker with an empty pool
		[ "${PASS:--1}" = -1 ] && step cuda-host ./cuda.test -test.run 'Pinned|Pipelined|CopiesKeepContent|CopyHonours' -test.v -test.count 1 # the host path still right, on the first pass
		step "cold-d2h${PASS:-}" env BENCH_PIN_BYTES=$((8 << 30)) ./cuda.test -test.run XXX -test.bench 'ColdD2H/(memworker|raw-warm)$' -test.benchtime 2x
		step "offload-restore${PASS:-}" env BENCH_MODEL_BYTES=$((10 << 30)) ./integration.test -test.run XXX -test.bench OffloadRestore -test.benchtime 3x
		step "transfer-to-host${PASS:-}" env BENCH_TRANSFER_BYTES=$((8 << 30)) ./integration.test -test.run XXX -test.bench 'TransferToHost$' -test.benchtime 3x
		;;
	colddrift) # P21: does a process's cold path slow from one copy to the next? each iteration logged, with and without warm workers between
		step cold-d2h-6x env BENCH_PIN_BYTES=$((8 << 30)) ./cuda.test -test.run XXX -test.bench 'ColdD2H/memworker$' -test.benchtime 6x
		step cold-d2h-holding env BENCH_PIN_BYTES=$((8 << 30)) BENCH_COLD_HELD=1 ./cuda.test -test.run XXX -test.bench 'ColdD2H/memworker(-holding.*)?$' -test.benchtime 3x
		step transfer-cold-only env BENCH_COLD_ONLY=1 BENCH_TRANSFER_BYTES=$((8 << 30)) ./integration.test -test.run XXX -test.bench 'TransferToHost$' -test.benchtime 5x
		step offload-cold-only env BENCH_COLD_ONLY=1 BENCH_MODEL_BYTES=$((10 << 30)) ./integration.test -test.run XXX -test.bench OffloadRestore -test.benchtime 4x
		step transfer-to-host env BENCH_TRANSFER_BYTES=$((8 << 30)) ./integration.test -test.run XXX -test.bench 'TransferToHost$' -test.benchtime 3x
		;;
	hostvmm) # P21: host memory the driver allocates and maps itself (virtual memory management): a cold copy into it against the registered segments' (the machine's first), then mapping and unmapping alone and beside a copy, then the cold copy again
		step cold-vmm-d2h env BENCH_PIN_BYTES=$((8 << 30)) ./cuda.test -test.run XXX -test.bench 'ColdVMMD2H|ColdD2H/(memworker|raw-warm|vmm-threads-.*)$' -test.benchtime 2x
		step host-vmm timeout 300 ./cuda.test -test.run XXX -test.bench 'HostVMM' -test.benchtime 2x
		step host-vmm-any-node env BENCH_HOST_NUMA=-1 timeout 60 ./cuda.test -test.run XXX -test.bench 'HostVMM/map/copying-true' -test.benchtime 2x
		step cold-vmm-d2h-again env BENCH_PIN_BYTES=$((8 << 30)) ./cuda.test -test.run XXX -test.bench 'ColdVMMD2H|ColdD2H/(memworker|raw-warm|vmm-threads-.*)$' -test.benchtime 2x
		;;
	hybrid) # P21: a cold copy split between the pipeline (primary context) and a bounce ring on a second context, run twice (the machine's first pass, then warmed)
		step hybrid-d2h env BENCH_PIN_BYTES=$((8 << 30)) timeout 400 ./cuda.test -test.run XXX -test.bench 'HybridD2H' -test.benchtime 2x -test.v
		step hybrid-d2h-again env BENCH_PIN_BYTES=$((8 << 30)) timeout 400 ./cuda.test -test.run XXX -test.bench 'HybridD2H' -test.benchtime 2x -test.v
		;;
	hostpath-contexts) # P21: cold offload and transfer to host end to end, the pinning threads on PIN_CONTEXTS (default 4) contexts of their own
		step offload-restore-contexts env BENCH_PIN_CONTEXTS=${PIN_CONTEXTS:-4} BENCH_MODEL_BYTES=$((10 << 30)) ./integration.test -test.run XXX -test.bench OffloadRestore -test.benchtime 3x
		step transfer-to-host-contexts env BENCH_PIN_CONTEXTS=${PIN_CONTEXTS:-4} BENCH_TRANSFER_BYTES=$((8 << 30)) ./integration.test -test.run XXX -test.bench 'TransferToHost' -test.benchtime 3x
		;;
	rounds) # P21: every case, four processes: five rounds of 1 s against twenty of 250 ms (rounds alternate the cases' order), twice each, alternating
		for i in 1 2; do
			step "rounds-5x1s-$i" env ROUNDS=5 BACKEND=cuda ./processes.sh separate
			step "rounds-20x250ms-$i" env ROUNDS=20 DURATION=250ms BACKEND=cuda ./processes.sh separate
		done
		;;
	readahead2) # P21 (never run; the experiment was reverted): one client, three workers alternating: the truth reader (memworker-base), a reading ahead on the handler's goroutine (memworker-sync, commit ac375ab) and on one of its own (./memworker built from commit 12a1326), twenty rounds of 250 ms; then every case, the reader's build and this one (REPEAT rounds of the three, default 3; ALL= skips every case)
		step warmup env CASES=echo,sized,get_status CONCURRENCY=64 ROUNDS=1 BACKEND=cuda ./processes.sh separate
		c1=(CASES=echo,sized,get_status CONCURRENCY=1 ROUNDS=20 DURATION=250ms BACKEND=cuda)
		for i in $(seq "${REPEAT:-3}"); do
			for wk in base sync this; do
				bin=./memworker-$wk
				[ $wk = this ] && bin=./memworker
				[ -x "$bin" ] && step "c1-$wk-$i" env "${c1[@]}" WORKER=$bin ./processes.sh separate
			done
		done
		[ -n "${ALL-1}" ] && [ -x ./memworker-base ] && step all-base env ROUNDS=20 DURATION=250ms BACKEND=cuda WORKER=./memworker-base ./processes.sh separate
		[ -n "${ALL-1}" ] && step all env ROUNDS=20 DURATION=250ms BACKEND=cuda ./processes.sh separate
		;;
	pairsim) # P21: allocate+deallocate at one client, the cuda worker against the sim worker (is the gap the driver's?), alternating, twenty rounds of 250 ms
		for i in $(seq "${REPEAT:-2}"); do
			for be in cuda sim; do
				step "pair-$be-$i" env CASES=echo,pair,allocate+deallocate CONCURRENCY=1 ROUNDS=20 DURATION=250ms BACKEND=$be ./processes.sh separate
			done
		done
		;;
	ahead) # P21: an offload 2 s after pressure reached warning finds its pinned memory ready (--pinned-ahead)
		step offload-ahead env BENCH_MODEL_BYTES=$((10 << 30)) ./integration.test -test.run XXX -test.bench OffloadAhead -test.benchtime 3x
		;;
	cache) # P21: freed memory goes back to the GPU after --cache-hold, for PyTorch to have
		step cache env OUT="$out" ./gpu-cache.sh
		;;
	benchcuda) # the request path on the cuda worker alone, with its CPU profile
		step membench-cuda ./membench --backend cuda --fleet-nodes 0 --monitor 0 --cpuprofile "$out/membench-cuda.prof"
		;;
	processes) # P21: the request path in processes of their own: nats-server, memworker --nats-url, the echo (membench --echo serve) and the clients (membench --echo elsewhere); then the worker with its embedded server, the echo in a process of its own
		for i in $(seq "${REPEAT:-1}"); do
			BACKEND=${BACKEND:-cuda} ROUNDS=${ROUNDS:-5} step "processes-4-$i" ./processes.sh separate
			BACKEND=${BACKEND:-cuda} ROUNDS=${ROUNDS:-5} step "processes-3-$i" ./processes.sh embedded
		done
		;;
	readhandlers) # P21: one-client latency by the worker's read handlers (1 against the default, 4 on 16 cores), four processes, alternating
		for rh in 1 4 1 4; do
			BACKEND=${BACKEND:-cuda} ROUNDS=${ROUNDS:-5} CASES=echo,sized,get_status MWFLAGS="--read-handlers $rh" step "read-handlers-$rh-$SECONDS" ./processes.sh separate
		done
		;;
	oneclient) # P21: one client, four processes: where the worker's time goes (page faults, switches, its handler's own time), by where the worker and the echo may run
		cases=(CASES=echo,sized,get_status CONCURRENCY=1 STATS=1 ROUNDS=${ROUNDS:-5})
		step oneclient-free env "${cases[@]}" BACKEND=cuda ./processes.sh separate
		step oneclient-2cores env "${cases[@]}" BACKEND=cuda WRAP="taskset -c 2,3" ECHO_WRAP="taskset -c 4,5" ./processes.sh separate
		step oneclient-2procs env "${cases[@]}" BACKEND=cuda WRAP="env GOMAXPROCS=2" ECHO_WRAP="env GOMAXPROCS=2" ./processes.sh separate
		step oneclient-worker-2cores env "${cases[@]}" BACKEND=cuda WRAP="taskset -c 2,3" ./processes.sh separate
		step oneclient-sim env "${cases[@]}" BACKEND=sim ./processes.sh separate
		step oneclient-free-again env "${cases[@]}" BACKEND=cuda ./processes.sh separate
		;;
	recent) # P21: one client, four processes, the worker of this build against memworker-base (an earlier build, when carried), alternating; then every case
		cases=(CASES=echo,sized,get_status CONCURRENCY=1 STATS=1 ROUNDS=${ROUNDS:-5} BACKEND=cuda)
		for i in 1 2; do
			[ -x ./memworker-base ] && step "recent-base-$i" env "${cases[@]}" WORKER=./memworker-base ./processes.sh separate
			step "recent-$i" env "${cases[@]}" ./processes.sh separate
		done
		BACKEND=cuda ROUNDS=${ROUNDS:-5} step processes-4 ./processes.sh separate
		;;
	since) # P21: one client against memworker-base (when carried), alternating; then the pair at 8 and 64 clients with the worker's GOMAXPROCS at 16, 4 and 8
		cases=(CASES=echo,sized,get_status CONCURRENCY=1 STATS=1 ROUNDS=${ROUNDS:-5} BACKEND=cuda)
		for i in 1 2; do
			[ -x ./memworker-base ] && step "since-base-$i" env "${cases[@]}" WORKER=./memworker-base ./processes.sh separate
			step "since-$i" env "${cases[@]}" ./processes.sh separate
		done
		for i in 1 2; do
			for p in 16 4 8; do
				step "procs-$p-$i" env CONCURRENCY=8,64 ROUNDS=3 BACKEND=cuda WRAP="env GOMAXPROCS=$p" ./processes.sh separate
			done
		done
		;;
	sinceall) # P21: every case against memworker-base (when carried), alternating; the worker's CPU profile at one client; one read handler at one client
		for i in 1 2; do
			[ -x ./memworker-base ] && step "all-base-$i" env ROUNDS=3 BACKEND=cuda WORKER=./memworker-base ./processes.sh separate
			step "all-$i" env ROUNDS=3 BACKEND=cuda ./processes.sh separate
		done
		step c1-profiled env CASES=echo,sized,get_status CONCURRENCY=1 STATS=1 ROUNDS=5 BACKEND=cuda PROFILE="$out/c1.prof" ./processes.sh separate
		for i in 1 2; do
			step "c1-readhandlers-1-$i" env CASES=echo,sized,get_status CONCURRENCY=1 STATS=1 ROUNDS=5 BACKEND=cuda MWFLAGS="--read-handlers 1" ./processes.sh separate
		done
		;;
	reader) # P21: this build against memworker-base (when carried): a warm-up, one client alternating (STATS), then every case, ALL_REPEAT times each (default 1), ALL_ROUNDS rounds (default 3) of ALL_DURATION (default 1s); the reading-ahead experiment (commit ac375ab as ./memworker, docs/h100/round3/request-path/readahead) ran it with 2, 20 and 250ms
		step warmup env CASES=echo,sized,get_status CONCURRENCY=64 ROUNDS=1 BACKEND=cuda ./processes.sh separate
		cases=(CASES=echo,sized,get_status CONCURRENCY=1 STATS=1 ROUNDS=${ROUNDS:-5} BACKEND=cuda)
		for i in 1 2; do
			[ -x ./memworker-base ] && step "reader-base-$i" env "${cases[@]}" WORKER=./memworker-base ./processes.sh separate
			step "reader-$i" env "${cases[@]}" ./processes.sh separate
		done
		all=(ROUNDS=${ALL_ROUNDS:-3} DURATION=${ALL_DURATION:-1s} BACKEND=cuda)
		for i in $(seq "${ALL_REPEAT:-1}"); do
			[ -x ./memworker-base ] && step "all-base-$i" env "${all[@]}" WORKER=./memworker-base ./processes.sh separate
			step "all-$i" env "${all[@]}" ./processes.sh separate
		done
		;;
	bench)
		step membench-cuda ./membench --backend cuda --fleet-nodes 0 --monitor 0 --cpuprofile "$out/membench-cuda.prof"
		step membench-sim ./membench
		step membench-sim-2procs env GOMAXPROCS=2 ./membench --fleet-nodes 0 --monitor 0
		;;
	esac
done
# The device tool brings back a few files per folder (8): one archive per
# step's folder, then one of this pass's files (pass-$PASS.tgz; a second
# pass in the same call archives its own).
for d in "$out"/*/; do
	[ -d "$d" ] && tar -C "$out" -czf "${d%/}.tgz" "$(basename "$d")" && rm -rf "$d"
done
cd "$out" && files=$(ls | grep -v '^pass.*\.tgz$') && tar -czf "pass${PASS:-}.tgz" $files && rm -f $files
