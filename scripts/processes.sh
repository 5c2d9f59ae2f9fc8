#!/usr/bin/env bash
# The request path with each party in a process of its own, as deployed:
# run from a folder holding memworker, membench and nats-server.
#   processes.sh separate: nats-server, memworker --nats-url, the echo
#     (membench --echo serve), the clients (membench --echo elsewhere);
#   processes.sh embedded: memworker with its embedded server, the echo
#     and the clients as above.
# BACKEND (sim or cuda, default sim), ROUNDS (default 5), PORT (default 4333),
# CASES (default all), MWFLAGS (more memworker flags).
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
./memworker --backend "${BACKEND:-sim}" --node bench "${worker[@]}" ${MWFLAGS:-} >"$tmp/memworker.log" 2>&1 &
pids+=($!)
up=
for _ in $(seq 100); do # until the worker answers and the echo stays up
	./membench --server "$url" --device bench-gpu0 --echo serve --cases echo,sized,get_status,pair >"$tmp/echo.log" 2>&1 &
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
./membench --server "$url" --device bench-gpu0 --echo elsewhere --rounds "${ROUNDS:-5}" --cases "${CASES:-echo,sized,get_status,pair,allocate+deallocate}"
