//go:build ignore

// Command pin-probe2 splits page-locking 8 GiB of fresh host memory into its
// two steps and times each alone, on its own threads, then both at once as
// two pipelined crews (pin-probe2.txt): faulting in (MADV_POPULATE_WRITE) on
// F threads, cuMemHostRegister on R threads, per chunk of C bytes. It first
// touches and frees 24 GiB so that no run pays for the hypervisor backing
// the guest's memory the first time. Build it with the cuda headers:
// . scripts/cuda-env.sh && go build -o probe2 docs/h100/round2/p15/pass5/pin-probe2.go
package main

/*
#cgo LDFLAGS: -lcuda -lpthread
#include <cuda.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <pthread.h>
#include <time.h>
#include <sys/mman.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec*1e3 + t.tv_nsec/1e6; }
static CUcontext ctx;
static const size_t total = 8ul << 30;

// A shared plan: nchunks chunks of csize; faulted counts chunks faulted
// (in order), next_f/next_r the next chunk each crew takes.
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static char *base; static size_t csize; static int nchunks, next_f, next_r, *faulted_flag;
static int do_fault, do_reg;

static void *fault_crew(void *a) {
	for (;;) {
		pthread_mutex_lock(&mu); int i = next_f++; pthread_mutex_unlock(&mu);
		if (i >= nchunks) return 0;
		madvise(base + (size_t)i*csize, csize, MADV_POPULATE_WRITE);
		pthread_mutex_lock(&mu); faulted_flag[i] = 1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
	}
}
// both_crew is what the worker does: each thread faults a chunk in and registers it.
static void *both_crew(void *a) {
	cuCtxSetCurrent(ctx);
	for (;;) {
		pthread_mutex_lock(&mu); int i = next_f++; pthread_mutex_unlock(&mu);
		if (i >= nchunks) return 0;
		madvise(base + (size_t)i*csize, csize, MADV_POPULATE_WRITE);
		cuMemHostRegister(base + (size_t)i*csize, csize, CU_MEMHOSTREGISTER_PORTABLE);
	}
}
static void *reg_crew(void *a) {
	cuCtxSetCurrent(ctx);
	for (;;) {
		pthread_mutex_lock(&mu); int i = next_r++;
		if (i >= nchunks) { pthread_mutex_unlock(&mu); return 0; }
		while (do_fault && !faulted_flag[i]) pthread_cond_wait(&cv, &mu);
		pthread_mutex_unlock(&mu);
		cuMemHostRegister(base + (size_t)i*csize, csize, CU_MEMHOSTREGISTER_PORTABLE);
	}
}
// run: fault on F threads and/or register on R threads; prefault: fault the
// whole region on 16 threads first (untimed) so that registering is timed alone.
static void run1(const char *what, int F, int R, size_t chunk, int prefault) {
	int both = F < 0; if (both) { F = -F; R = 0; }
	base = mmap(0, total, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
	madvise(base, total, MADV_HUGEPAGE);
	csize = chunk; nchunks = total / chunk; next_f = next_r = 0;
	faulted_flag = calloc(nchunks, sizeof(int));
	pthread_t th[64]; int n = 0;
	if (prefault) {
		do_fault = 1;
		for (int i = 0; i < 16; i++) pthread_create(&th[n++], 0, fault_crew, 0);
		for (int i = 0; i < n; i++) pthread_join(th[i], 0);
		n = 0; next_f = nchunks;
	}
	do_fault = F > 0 || prefault; do_reg = R > 0;
	double t0 = now();
	for (int i = 0; i < F; i++) pthread_create(&th[n++], 0, both ? both_crew : fault_crew, 0);
	for (int i = 0; i < R; i++) pthread_create(&th[n++], 0, reg_crew, 0);
	for (int i = 0; i < n; i++) pthread_join(th[i], 0);
	double t1 = now();
	printf("%-22s fault %2d register %2d chunk %4zu MiB: %5.1f GB/s (%.0f ms)\n", what, F, R, chunk >> 20, total/((t1-t0)*1e6), t1-t0);
	if (R || both) for (int i = 0; i < nchunks; i++) cuMemHostUnregister(base + (size_t)i*csize);
	munmap(base, total); free(faulted_flag);
}
static void run() {
	setvbuf(stdout, NULL, _IONBF, 0);
	cuInit(0);
	CUdevice dev; cuDeviceGet(&dev, 0);
	cuDevicePrimaryCtxRetain(&ctx, dev); cuCtxSetCurrent(ctx);
	// Warm the guest: touch 24 GiB once, then give it back.
	size_t w = 24ul << 30; char *p = mmap(0, w, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
	madvise(p, w, MADV_HUGEPAGE);
	double t0 = now(); for (size_t o = 0; o < w; o += 4096) p[o] = 1; printf("warm-up touch of 24 GiB, one thread: %.0f ms\n", now() - t0);
	munmap(p, w);
	int ts[] = {1, 2, 4, 8, 12, 16};
	for (int k = 0; k < 6; k++) run1("fault only", ts[k], 0, 128ul << 20, 0);
	for (int k = 0; k < 6; k++) run1("each thread both", -ts[k], 0, 128ul << 20, 0);
	size_t cs[] = {32ul << 20, 128ul << 20, 512ul << 20, 2048ul << 20};
	for (int c = 0; c < 4; c++) for (int k = 0; k < 5; k++) run1("register only (faulted)", 0, ts[k], cs[c], 1);
	for (int k = 0; k < 5; k++) run1("register faults (no advise)", 0, ts[k], 128ul << 20, 0);
	int fr[][2] = {{8, 8}, {4, 4}, {8, 2}, {8, 4}, {12, 2}, {12, 4}, {14, 2}, {16, 4}, {16, 8}, {6, 2}};
	for (int k = 0; k < 10; k++) run1("pipelined", fr[k][0], fr[k][1], 128ul << 20, 0);
	for (int k = 0; k < 10; k++) run1("pipelined", fr[k][0], fr[k][1], 32ul << 20, 0);
	// The worker's current scheme for comparison: each thread faults then registers its chunk.
	for (int k = 0; k < 6; k++) run1("each thread both", -ts[k], 0, 128ul << 20, 0);
}
*/
import "C"

func main() { C.run() }
