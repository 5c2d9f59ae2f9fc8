#!/usr/bin/env python3
"""A stand-in for a vLLM server, for proving the brokered handoff on a GPU
machine that has PyTorch but not vLLM (scripts/gpu-handoff.sh).

It holds real GPU memory the way a model server does, weights and a KV
cache, and serves vLLM's sleep-mode endpoints over HTTP:

  POST /sleep?level=1  weights to pinned host memory, KV cache discarded,
                       torch.cuda.empty_cache(): the GPU memory goes back
  POST /wake_up        weights back on the GPU (checked), KV cache again
  GET  /health         200 once loaded
  GET  /stats          what it did and how long each step took (JSON)

With --engine-child the GPU work runs in a child process, as vLLM's engine
core does, and the HTTP server in the parent never touches CUDA: the memory
NVML shows is the child's. Every step is logged as a JSON line with its
wall-clock time (--log), so a timeline can be drawn from it.

  model-server.py --port 8101 --bytes 53687091200 --engine-child --log a.jsonl
"""

import time

STARTED = time.time()  # before importing torch: the moment the process began

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

GiB = 1 << 30


class Log:
    """JSON lines with the wall-clock time, to a file (and stderr)."""

    def __init__(self, path, name):
        self.f = open(path, "a", buffering=1) if path else None
        self.name = name
        self.lock = threading.Lock()

    def __call__(self, event, **fields):
        line = json.dumps({"t": time.time(), "server": self.name, "pid": os.getpid(), "event": event, **fields})
        with self.lock:
            if self.f:
                self.f.write(line + "\n")
            print(line, file=sys.stderr, flush=True)


class Engine:
    """The GPU side: weights and a KV cache as PyTorch tensors."""

    def __init__(self, total_bytes, weights_bytes, log):
        import torch

        self.torch, self.log = torch, log
        self.weights_bytes = weights_bytes
        self.kv_bytes = total_bytes - weights_bytes
        self.host = None
        t0 = time.perf_counter()
        self.weights = torch.empty(self.weights_bytes, dtype=torch.uint8, device="cuda")
        self.weights.random_()
        self.kv = torch.empty(self.kv_bytes, dtype=torch.uint8, device="cuda")
        self.kv.zero_()
        torch.cuda.synchronize()
        # A sample of the weights (every 4096th byte) to check them by when
        # they come back: a sum over all of them would need a wider copy.
        self.sample = self.weights[::4096].clone()
        log("loaded", seconds=time.perf_counter() - t0, weights_bytes=self.weights_bytes, kv_bytes=self.kv_bytes,
            gpu_allocated_bytes=torch.cuda.memory_allocated())

    def sleep(self):
        """vLLM's level 1: weights to pinned host memory, the KV cache
        dropped, the cached blocks returned to the driver."""
        torch = self.torch
        if self.weights is None:
            return {"asleep": True}
        t0 = time.perf_counter()
        self.log("sleep_start")
        self.host = torch.empty(self.weights_bytes, dtype=torch.uint8, pin_memory=True)
        t_pin = time.perf_counter()
        self.host.copy_(self.weights, non_blocking=True)
        torch.cuda.synchronize()
        t_copy = time.perf_counter()
        self.weights = self.kv = None
        torch.cuda.empty_cache()
        t_free = time.perf_counter()
        r = {"seconds": t_free - t0, "pin_seconds": t_pin - t0, "copy_seconds": t_copy - t_pin,
             "free_seconds": t_free - t_copy, "copy_gbps": self.weights_bytes / (t_copy - t_pin) / 1e9,
             "gpu_reserved_bytes": torch.cuda.memory_reserved()}
        self.log("sleep_done", **r)
        return r

    def wake_up(self):
        """Weights back from host memory, checked; a fresh KV cache."""
        torch = self.torch
        if self.weights is not None:
            return {"awake": True}
        t0 = time.perf_counter()
        self.log("wake_start")
        self.weights = torch.empty(self.weights_bytes, dtype=torch.uint8, device="cuda")
        self.weights.copy_(self.host, non_blocking=True)
        self.kv = torch.empty(self.kv_bytes, dtype=torch.uint8, device="cuda")
        self.kv.zero_()
        torch.cuda.synchronize()
        t_copy = time.perf_counter()
        ok = bool(torch.equal(self.weights[::4096], self.sample))
        self.host = None
        r = {"seconds": time.perf_counter() - t0, "copy_gbps": self.weights_bytes / (t_copy - t0) / 1e9, "weights_intact": ok}
        self.log("wake_done", **r)
        if not ok:
            raise RuntimeError("the weights came back changed")
        return r


def engine_loop(conn, total_bytes, weights_bytes, log_path, name):
    """The engine in a child process: commands over a pipe."""
    log = Log(log_path, name + "-engine")
    engine = Engine(total_bytes, weights_bytes, log)
    conn.send({"loaded": True})
    while True:
        cmd = conn.recv()
        if cmd == "exit":
            return
        try:
            conn.send({"ok": getattr(engine, cmd)()})
        except Exception as e:  # the parent answers 500 with it
            conn.send({"error": repr(e)})


class Server:
    def __init__(self, args, log):
        self.log, self.lock = log, threading.Lock()
        self.stats = {"started": STARTED, "sleeps": [], "wakes": []}
        weights = int(args.bytes * args.weights_fraction)
        if args.engine_child:
            ctx = mp.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.child = ctx.Process(target=engine_loop, args=(child, args.bytes, weights, args.log, args.name), daemon=True)
            self.child.start()
            log("engine_started", engine_pid=self.child.pid)
            self._recv()
            self.call = self._call_child
        else:
            self.engine = Engine(args.bytes, weights, log)
            self.call = lambda cmd: getattr(self.engine, cmd)()

    def _recv(self):
        """The engine's answer; an engine that died is an error, not a hang."""
        while not self.conn.poll(0.5):
            if not self.child.is_alive():
                raise RuntimeError(f"the engine process exited with {self.child.exitcode}")
        return self.conn.recv()

    def _call_child(self, cmd):
        self.conn.send(cmd)
        r = self._recv()
        if "error" in r:
            raise RuntimeError(r["error"])
        return r["ok"]

    def do(self, cmd):
        with self.lock:  # one sleep or wake at a time, as vLLM
            r = self.call(cmd)
            self.stats["sleeps" if cmd == "sleep" else "wakes"].append(r)
            return r


def handler(server):
    class H(BaseHTTPRequestHandler):
        def reply(self, code, body):
            b = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)

        def do_GET(self):
            path = urlparse(self.path).path
            if path == "/health":
                self.reply(200, {"status": "ok"})
            elif path == "/stats":
                self.reply(200, server.stats)
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            u = urlparse(self.path)
            if u.path == "/sleep":
                level = parse_qs(u.query).get("level", ["1"])[0]
                if level != "1":
                    return self.reply(400, {"error": "only level 1 is served"})
                cmd = "sleep"
            elif u.path == "/wake_up":
                cmd = "wake_up"
            else:
                return self.reply(404, {"error": "not found"})
            try:
                self.reply(200, server.do(cmd))
            except Exception as e:
                self.reply(500, {"error": repr(e)})

        def log_message(self, *a):
            pass

    return H


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True, help="GPU memory to hold in tensors (weights + KV cache)")
    p.add_argument("--headroom", type=float, default=1.0, help="GiB of --bytes left for the CUDA context (default 1)")
    p.add_argument("--weights-fraction", type=float, default=0.4)
    p.add_argument("--engine-child", action="store_true", help="do the GPU work in a child process")
    p.add_argument("--exit-after", type=float, default=0, help="exit this many seconds after loading (0: run until killed)")
    p.add_argument("--log", help="append the JSON lines here")
    p.add_argument("--name", default="model")
    args = p.parse_args()
    args.bytes -= int(args.headroom * GiB)
    log = Log(args.log, args.name)
    log("process_started", at=STARTED, allocation_id=os.environ.get("MEMWORKER_ALLOCATION_ID"),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    server = Server(args, log)
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), handler(server))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    log("serving", port=args.port)
    deadline = time.time() + args.exit_after if args.exit_after > 0 else None
    while not stop.wait(0.1) and (deadline is None or time.time() < deadline):
        pass
    httpd.shutdown()
    if args.engine_child:
        server.conn.send("exit")
        server.child.join(10)
    log("exiting")


if __name__ == "__main__":
    main()
