//go:build ignore

// Command driver-calls times the CUDA driver calls behind virtual memory on
// GPU 0 (driver-calls.txt): cuMemAlloc of 1 GiB, then 1 GiB reserved, made,
// mapped, given access and unmapped in handles of 2 MiB to 1 GiB, then 2 MiB
// handles made and mapped on 1 to 16 threads. Build it as README.md says,
// with the cuda headers: . scripts/cuda-env.sh && go build -o probe
// docs/h100/round2/p16/driver-calls.go
package main

/*
#cgo LDFLAGS: -lcuda -lpthread
#include <cuda.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec*1e3 + t.tv_nsec/1e6; }
static CUcontext ctx;
static CUmemAllocationProp prop;

typedef struct { CUdeviceptr base; size_t n, h; int k, nth; } job;
static void *worker(void *a) {
	job *j = a;
	cuCtxSetCurrent(ctx);
	for (size_t off = (size_t)j->k * j->h; off < j->n; off += (size_t)j->nth * j->h) {
		CUmemGenericAllocationHandle hd;
		if (cuMemCreate(&hd, j->h, &prop, 0)) { printf("create fail\n"); return 0; }
		if (cuMemMap(j->base + off, j->h, 0, hd, 0)) { printf("map fail\n"); return 0; }
		cuMemRelease(hd);
	}
	return 0;
}

static void run() {
	setvbuf(stdout, NULL, _IONBF, 0);
	cuInit(0);
	CUdevice dev; cuDeviceGet(&dev, 0);
	cuDevicePrimaryCtxRetain(&ctx, dev); cuCtxSetCurrent(ctx);
	memset(&prop, 0, sizeof prop);
	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED; prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE; prop.location.id = 0;
	size_t G = 1ul << 30;
	for (int rep = 0; rep < 3; rep++) {
		CUdeviceptr d; double t0 = now(); cuMemAlloc(&d, G); double t1 = now(); cuMemFree(d); double t2 = now();
		printf("cuMemAlloc 1GiB %.2f ms, free %.2f ms\n", t1-t0, t2-t1);
	}
	size_t hs[] = {2ul<<20, 8ul<<20, 32ul<<20, 128ul<<20, 1ul<<30};
	for (int rep = 0; rep < 2; rep++)
	for (int i = 0; i < 5; i++) {
		size_t h = hs[i], n = G / h;
		CUdeviceptr base; double t0 = now();
		cuMemAddressReserve(&base, G, 0, 0, 0); double t1 = now();
		CUmemGenericAllocationHandle hd[512];
		for (size_t k = 0; k < n; k++) cuMemCreate(&hd[k], h, &prop, 0);
		double t2 = now();
		for (size_t k = 0; k < n; k++) cuMemMap(base + k*h, h, 0, hd[k], 0);
		double t3 = now();
		CUmemAccessDesc acc; memset(&acc, 0, sizeof acc); acc.location.type = CU_MEM_LOCATION_TYPE_DEVICE; acc.location.id = 0; acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
		CUresult r = cuMemSetAccess(base, G, &acc, 1);
		double t4 = now();
		for (size_t k = 0; k < n; k++) cuMemRelease(hd[k]);
		double t5 = now();
		for (size_t k = 0; k < n; k++) cuMemUnmap(base + k*h, h);
		double t6 = now();
		cuMemAddressFree(base, G); double t7 = now();
		printf("handle %4zu MiB: reserve %.2f create %.2f map %.2f access %.2f (r=%d) release %.2f unmap %.2f free %.2f | alloc total %.2f ms\n",
			h>>20, t1-t0, t2-t1, t3-t2, t4-t3, r, t5-t4, t6-t5, t7-t6, t4-t0);
	}
	for (int nth = 1; nth <= 16; nth *= 2) {
		CUdeviceptr base; cuMemAddressReserve(&base, G, 0, 0, 0);
		double t0 = now();
		pthread_t th[16]; job js[16];
		for (int k = 0; k < nth; k++) { js[k] = (job){base, G, 2ul<<20, k, nth}; pthread_create(&th[k], 0, worker, &js[k]); }
		for (int k = 0; k < nth; k++) pthread_join(th[k], 0);
		double t1 = now();
		CUmemAccessDesc acc; memset(&acc, 0, sizeof acc); acc.location.type = CU_MEM_LOCATION_TYPE_DEVICE; acc.location.id = 0; acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
		cuMemSetAccess(base, G, &acc, 1);
		double t2 = now();
		cuMemUnmap(base, G);
		double t3 = now();
		cuMemAddressFree(base, G);
		printf("threads %2d: create+map 512 x 2 MiB %.2f ms, access %.2f, unmap whole range at once %.2f ms\n", nth, t1-t0, t2-t1, t3-t2);
	}
}
*/
import "C"

func main() { C.run() }
