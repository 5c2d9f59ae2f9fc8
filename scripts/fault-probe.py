#!/usr/bin/env python3
"""A second tool's figures for page-locking fresh host memory (the first is
the cuda package's BenchmarkFreshPages): numpy arrays of BYTES (default
8 GiB), one byte written per 4 KiB page, on 1 to 16 threads; then, when
PyTorch is there, cudaHostRegister (the runtime's, through PyTorch) of
memory faulted in already, whole and in 128 MiB chunks on 1 to 16 threads,
and PyTorch's own cold pinned allocation of the same size.

  python3 scripts/fault-probe.py [BYTES]
"""
import sys
import threading
import time

import numpy as np

n = int(sys.argv[1]) if len(sys.argv) > 1 else 8 << 30
try:
    huge = np.core.multiarray._get_madvise_hugepage()
except Exception:
    huge = "unknown"
print(f"numpy {np.__version__}, madvise(MADV_HUGEPAGE) on large arrays: {huge}")


def timed(threads):
    """Starts the threads, waits for them, and returns the seconds."""
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def anon_huge():
    for line in open("/proc/meminfo"):
        if line.startswith("AnonHugePages"):
            return line.split()[1] + " kB"


for threads in (1, 4, 8, 16):
    for run in (1, 2):
        a = np.empty(n, dtype=np.uint8)  # mapped, not faulted in
        step = n // threads // 4096 * 4096

        def touch(i):
            end = n if i == threads - 1 else (i + 1) * step
            a[i * step:end:4096] = 1  # numpy drops the GIL for the loop

        dt = timed([threading.Thread(target=touch, args=(i,)) for i in range(threads)])
        print(f"write a byte per 4 KiB, {threads:2d} threads, run {run}: {n / dt / 1e9:6.1f} GB/s "
              f"({dt:.3f} s; AnonHugePages {anon_huge()})", flush=True)
        del a

try:
    import torch
except ImportError:
    sys.exit(0)
cudart = torch.cuda.cudart()
torch.cuda.init()
chunk = 128 << 20
for threads in (0, 1, 8, 16):  # 0: one call for the whole array
    a = np.empty(n, dtype=np.uint8)
    a[::4096] = 1  # faulted in, untimed
    base = a.ctypes.data
    chunks = [(base, n)] if threads == 0 else [(base + o, min(chunk, n - o)) for o in range(0, n, chunk)]
    todo = list(chunks)
    lock = threading.Lock()

    def register():
        while True:
            with lock:
                if not todo:
                    return
                p, size = todo.pop(0)
            err = cudart.cudaHostRegister(p, size, 0)
            if int(err) != 0:
                raise RuntimeError(f"cudaHostRegister: {err}")

    dt = timed([threading.Thread(target=register) for _ in range(max(threads, 1))])
    what = "one call" if threads == 0 else f"128 MiB chunks, {threads:2d} threads"
    print(f"cudaHostRegister of memory faulted in, {what}: {n / dt / 1e9:6.1f} GB/s ({dt:.3f} s)", flush=True)
    for p, _ in chunks:
        cudart.cudaHostUnregister(p)
    del a

t0 = time.perf_counter()  # once: PyTorch caches what it pinned
h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
dt = time.perf_counter() - t0
print(f"torch.empty(pin_memory=True): {n / dt / 1e9:.1f} GB/s ({dt:.3f} s)", flush=True)
