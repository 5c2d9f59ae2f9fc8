#!/usr/bin/env python3
"""A second tool's figure for faulting fresh host memory in (the first is
the cuda package's BenchmarkFreshPages): numpy arrays of BYTES (default
8 GiB), one byte written per 4 KiB page, on 1 to 16 threads; then PyTorch's
own cold pinned allocation of the same size when PyTorch is there.

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

        ts = [threading.Thread(target=touch, args=(i,)) for i in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        print(f"write a byte per 4 KiB, {threads:2d} threads, run {run}: {n / dt / 1e9:6.1f} GB/s "
              f"({dt:.3f} s; AnonHugePages {anon_huge()})", flush=True)
        del a

try:
    import torch
except ImportError:
    sys.exit(0)
t0 = time.perf_counter()  # once: PyTorch caches what it pinned
h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
dt = time.perf_counter() - t0
print(f"torch.empty(pin_memory=True): {n / dt / 1e9:.1f} GB/s ({dt:.3f} s)", flush=True)
