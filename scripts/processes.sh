#!/usr/bin/env bash
# The request path with each party in a process of its own, as deployed:
# run from a folder holding memworker, membench and nats-server.
#   processes.sh separate: nats-server, memworker --nats-url, the echo
#     (membench --echo serve), the clients (membench --echo elsewhere);
#   processes.sh embedded: memworker with its embedded server, the echo
#     and the clients as above.
# BACKEND (sim or cuda, default sim), ROUNDS (default 5), DURATION (of each case
# each round, default membench's 1s), PORT (default 4333),
# CASES (default all), CONCURRENCY (default 1,8,64), MWFLAGS (more memworker flags),
# WORKER (the memworker binary, default ./memworker), WRAP and ECHO_WRAP
# (a command the worker or the echo runs under, such as "taskset -c 2,3"),
# STATS=1 (the worker's and the echo's page faults, context switches, CPU
# time and the worker's own get_status handler time over the measured run,
# after a first, unmeasured one; --metrics-addr is added), PROFILE (with
# STATS: write the worker's CPU profile over the measured run there).
set -euo pipefail
shape=${1:-separate}
port=${PORT:-4333}
url=nats://127.0.0.1:$port
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
if [ "$shape" = separate ]; then
	./nats-server -a 127.0.0.1 -p "$port" -js -sd "$tmp/js" >"$tmp/nats-server.log" 2>&1 &
	pids+=($!)
	worker=(--nats-url "$url")
else
	worker=(--port "$port" --store-dir "$tmp/js")
fi
metrics=()
[ -n "${STATS:-}" ] && metrics=(--metrics-addr 127.0.0.1:$((port + 1)))
[ -n "${PROFILE:-}" ] && metrics+=(--pprof)
${WRAP:-} "${WORKER:-./memworker}" --backend "${BACKEND:-sim}" --node bench "${worker[@]}" "${metrics[@]}" ${MWFLAGS:-} >"$tmp/memworker.log" 2>&1 &
pids+=($!)
wpid=$!
up=
for _ in $(seq 100); do # until the worker answers and the echo stays up
	${ECHO_WRAP:-} ./membench --server "$url" --device bench-gpu0 --echo serve --cases echo,sized,get_status,pair >"$tmp/echo.log" 2>&1 &
	pids+=($!)
	sleep 0.3
	if kill -0 "${pids[-1]}" 2>/dev/null; then
		up=1
		break
	fi
	wait "${pids[-1]}" || true
	unset 'pids[-1]'
done
if [ -z "$up" ]; then
	echo "the echo did not come up:" >&2
	cat "$tmp/echo.log" "$tmp/memworker.log" >&2
	exit 1
fi
sleep 0.5
echo "shape: $shape; processes: $(ps -o pid=,comm= -p "$(IFS=,; echo "${pids[*]}")" | tr -s ' \n' ' ')"
bench=(./membench --server "$url" --device bench-gpu0 --echo elsewhere --cases "${CASES:-echo,sized,get_status,pair,allocate+deallocate}" --concurrency "${CONCURRENCY:-1,8,64}" --duration "${DURATION:-1s}")
if [ -z "${STATS:-}" ]; then
	"${bench[@]}" --rounds "${ROUNDS:-5}"
	exit
fi
epid=${pids[-1]}
# minflt majflt utime stime (ticks) of the process; voluntary and nonvoluntary switches of its threads
stats() {
	local pid=$1
	read -r -a f < <(sed 's/.*) //' "/proc/$pid/stat")
	echo "${f[7]} ${f[9]} ${f[11]} ${f[12]} $(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/ {v+=$2} /^nonvoluntary_ctxt/ {n+=$2} END {print v, n}')"
}
handler() {
	curl -s "http://127.0.0.1:$((port + 1))/metrics" | awk '/^memworker_request_duration_seconds_(count|sum)\{op="get_status"/ {printf "%s ", $2} END {print ""}'
}
"${bench[@]}" --rounds 1 >"$tmp/first.txt" # a first run, unmeasured: warm both
w0=$(stats "$wpid") e0=$(stats "$epid") h0=$(handler)
if [ -n "${PROFILE:-}" ]; then
	cases=${CASES:-echo,sized,get_status,pair,allocate+deallocate}
	n=$(tr ',' '\n' <<<"$cases" | wc -l)
	curl -s -o "$PROFILE" "http://127.0.0.1:$((port + 1))/debug/pprof/profile?seconds=$((${ROUNDS:-5} * n * $(tr ',' '\n' <<<"${CONCURRENCY:-1,8,64}" | wc -l)))" &
	pids+=($!)
fi
"${bench[@]}" --rounds "${ROUNDS:-5}" --warmup 0
[ -n "${PROFILE:-}" ] && wait "${pids[-1]}"
w1=$(stats "$wpid") e1=$(stats "$epid") h1=$(handler)
delta() { paste -d' ' <(tr ' ' '\n' <<<"$1") <(tr ' ' '\n' <<<"$2") | awk '{printf "%d ", $2 - $1}'; }
echo "over the measured run: minflt majflt utime stime voluntary nonvoluntary (ticks of 10 ms)"
echo "worker: $(delta "$w0" "$w1")"
echo "echo:   $(delta "$e0" "$e1")"
read -r s0 c0 <<<"$h0" # the sum comes first
read -r s1 c1 <<<"$h1"
awk -v c0="$c0" -v c1="$c1" -v s0="$s0" -v s1="$s1" 'BEGIN {n = c1 - c0; if (n > 0) printf "worker get_status handler: %d requests, %.2f us each\n", n, (s1 - s0) / n * 1e6}'
