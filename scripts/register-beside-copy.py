#!/usr/bin/env python3
"""A second tool's figure for page-locking beside a copy (the first is the
cuda package's BenchmarkRegisterBesideCopy): PyTorch copies 64 MiB pieces
of a 1 GiB device tensor to pinned memory, non-blocking on a stream, at
most four in flight, logging when each lands; meanwhile BYTES (default
4 GiB) of numpy memory, written a byte per 4 KiB beforehand, is registered
with the runtime's cudaHostRegister in 64 MiB chunks, then unregistered.
The copier runs in a thread of this process, then in a second process.
Printed: each step's rate, and the copier's rate in the step's window and
in the 100 ms before it.

  python3 scripts/register-beside-copy.py [BYTES]
"""
import multiprocessing as mp
import sys
import threading
import time

import numpy as np
import torch

PIECE = 64 << 20


def copier(stop, log, ready):
    """Copies until stop is set; appends (monotonic time, bytes landed)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    s = torch.cuda.Stream()
    flying, landed = [], 0
    ready.set()
    with torch.cuda.stream(s):
        while not stop.is_set():
            for off in range(0, 1 << 30, PIECE):
                dst[off:off + PIECE].copy_(src[off:off + PIECE], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(s)
                flying.append(ev)
                if len(flying) > 4:
                    flying.pop(0).synchronize()
                    landed += PIECE
                    log.append((time.monotonic(), landed))
    torch.cuda.synchronize()


def child(stop, log, ready):
    """The copier in a child process, its log sent back through a pipe."""
    out = []
    copier(stop, out, ready)
    log.send(out)


def in_thread():
    """Starts the copier in a thread; returns what stops it and gives its log."""
    stop, ready, log = threading.Event(), threading.Event(), []
    t = threading.Thread(target=copier, args=(stop, log, ready))
    t.start()
    ready.wait()

    def finish():
        stop.set()
        t.join()
        return log
    return finish


def in_a_process():
    """Starts the copier in a process of its own (a context of its own)."""
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=child, args=(stop, send, ready))
    p.start()
    ready.wait()

    def finish():
        stop.set()
        log = recv.recv()
        p.join()
        return log
    return finish


def rate(log, t0, t1):
    """The copier's GB/s between t0 and t1, from its log."""
    before = [b for t, b in log if t <= t0]
    upto = [b for t, b in log if t <= t1]
    if not before or not upto:
        return float("nan")
    return (upto[-1] - before[-1]) / (t1 - t0) / 1e9


def steps(n, cudart):
    """Registers and unregisters n fresh bytes in chunks; returns windows."""
    a = np.empty(n, dtype=np.uint8)
    a[::4096] = 1
    p = a.ctypes.data
    out = []
    for name in ("register", "unregister"):
        time.sleep(0.1)
        t0 = time.monotonic()
        for off in range(0, n, PIECE):
            if name == "register":
                r = cudart.cudaHostRegister(p + off, min(PIECE, n - off), 0)
            else:
                r = cudart.cudaHostUnregister(p + off)
            if int(r) != 0:
                raise SystemExit(f"{name}: {r}")
        out.append((name, t0, time.monotonic()))
    return out


def report(where, n, windows, log):
    for name, t0, t1 in windows:
        print(f"{where}: {name} {n >> 20} MiB: {n / (t1 - t0) / 1e9:6.1f} GB/s ({t1 - t0:.3f} s); "
              f"copier {rate(log, t0, t1):5.1f} GB/s in the window, "
              f"{rate(log, t0 - 0.1, t0):5.1f} GB/s in the 100 ms before", flush=True)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4 << 30
    torch.cuda.init()
    cudart = torch.cuda.cudart()
    for run in (1, 2):
        for where, start in (("thread", in_thread), ("process", in_a_process)):
            finish = start()
            time.sleep(0.2)
            windows = steps(n, cudart)
            report(f"{where}, run {run}", n, windows, finish())

if __name__ == "__main__":
    main()
