//go:build ignore

// Command vram-cycle times what an offload and a restore of a 10 GiB model
// ask of the driver besides the copy (vram-cycle.txt): giving ten 1 GiB
// blocks back and taking them again, written in between as a model is, as
// cuMemAlloc/cuMemFree segments and as virtual memory mapped in pieces of
// 64 MiB (the worker's default) and of 1 GiB. Each kind runs five cycles,
// and the kinds take turns. Build: . scripts/cuda-env.sh && go build -o
// vram-cycle docs/h100/round2/vram-cycle/vram-cycle.go
package main

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec*1e3 + t.tv_nsec/1e6; }
static const size_t G = 1ul << 30;
enum { N = 10 };
static CUmemAllocationProp prop;
static CUmemAccessDesc acc;

static void raw(double *take, double *give) {
	CUdeviceptr d[N];
	double t0 = now();
	for (int i = 0; i < N; i++) cuMemAlloc(&d[i], G);
	*take = now() - t0;
	for (int i = 0; i < N; i++) cuMemsetD8(d[i], 1, G);
	cuCtxSynchronize();
	t0 = now();
	for (int i = 0; i < N; i++) cuMemFree(d[i]);
	*give = now() - t0;
}
static CUdeviceptr base;
static void vmm(size_t piece, double *take, double *give) {
	size_t n = N * G / piece;
	double t0 = now();
	for (size_t k = 0; k < n; k++) {
		CUmemGenericAllocationHandle h;
		cuMemCreate(&h, piece, &prop, 0);
		cuMemMap(base + k*piece, piece, 0, h, 0);
		cuMemRelease(h);
		cuMemSetAccess(base + k*piece, piece, &acc, 1);
	}
	*take = now() - t0;
	cuMemsetD8(base, 1, N * G);
	cuCtxSynchronize();
	t0 = now();
	for (size_t k = 0; k < n; k++) cuMemUnmap(base + k*piece, piece);
	*give = now() - t0;
}
static void run() {
	setvbuf(stdout, NULL, _IONBF, 0);
	cuInit(0);
	CUdevice dev; cuDeviceGet(&dev, 0);
	CUcontext ctx; cuDevicePrimaryCtxRetain(&ctx, dev); cuCtxSetCurrent(ctx);
	memset(&prop, 0, sizeof prop);
	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED; prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE; prop.location.id = 0;
	memset(&acc, 0, sizeof acc);
	acc.location.type = CU_MEM_LOCATION_TYPE_DEVICE; acc.location.id = 0; acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	cuMemAddressReserve(&base, 11 * G, G, 0, 0);
	const char *names[] = {"cuMemAlloc 1 GiB", "pieces of 64 MiB", "pieces of 1 GiB"};
	for (int round = 0; round < 5; round++)
	for (int k = 0; k < 3; k++) {
		double take, give;
		if (k == 0) raw(&take, &give); else vmm(k == 1 ? 64ul << 20 : G, &take, &give);
		printf("round %d %-18s take 10 GiB %6.2f ms, give back %6.2f ms\n", round, names[k], take, give);
	}
}
*/
import "C"

func main() { C.run() }
