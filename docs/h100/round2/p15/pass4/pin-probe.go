//go:build ignore

// Command pin-probe times page-locking 8 GiB of fresh host memory on GPU 0's
// host (pin-probe.txt): MADV_POPULATE_WRITE then cuMemHostRegister per 128 MiB
// on 1, 8 and 16 threads, for transparent huge pages, 4 KiB pages and
// hugetlbfs pages (it reserves them in /proc/sys/vm/nr_hugepages when it may).
// Build it with the cuda headers: . scripts/cuda-env.sh && go build -o probe
// docs/h100/round2/p15/pass4/pin-probe.go
package main

/*
#cgo LDFLAGS: -lcuda -lpthread
#include <cuda.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <sys/mman.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
#endif

static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec*1e3 + t.tv_nsec/1e6; }
static CUcontext ctx;
typedef struct { char *p; size_t n; int reg; double fault, lock; } job;
static void *work(void *a) {
	job *j = a;
	cuCtxSetCurrent(ctx);
	size_t chunk = 128ul << 20;
	for (size_t off = 0; off < j->n; off += chunk) {
		double t0 = now();
		madvise(j->p + off, chunk, MADV_POPULATE_WRITE);
		double t1 = now();
		if (j->reg) cuMemHostRegister(j->p + off, chunk, CU_MEMHOSTREGISTER_PORTABLE);
		double t2 = now();
		j->fault += t1 - t0; j->lock += t2 - t1;
	}
	return 0;
}
static void run1(const char *name, int flags, int advise, int threads, int reg) {
	size_t total = 8ul << 30, per = total / threads;
	char *p = mmap(0, total, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|flags, -1, 0);
	if (p == MAP_FAILED) { printf("%s: mmap failed\n", name); return; }
	if (advise) madvise(p, total, MADV_HUGEPAGE);
	pthread_t th[32]; job js[32];
	double t0 = now();
	for (int i = 0; i < threads; i++) { js[i] = (job){p + i*per, per, reg, 0, 0}; pthread_create(&th[i], 0, work, &js[i]); }
	double f = 0, l = 0;
	for (int i = 0; i < threads; i++) { pthread_join(th[i], 0); f += js[i].fault; l += js[i].lock; }
	double t1 = now();
	printf("%-8s threads %2d register %d: %.1f GB/s (fault %.0f ms, lock %.0f ms per thread)\n", name, threads, reg, total/((t1-t0)*1e6), f/threads, l/threads);
	if (reg) for (size_t off = 0; off < total; off += 128ul<<20) cuMemHostUnregister(p + off);
	munmap(p, total);
}
static void run() {
	setvbuf(stdout, NULL, _IONBF, 0);
	cuInit(0);
	CUdevice dev; cuDeviceGet(&dev, 0);
	cuDevicePrimaryCtxRetain(&ctx, dev); cuCtxSetCurrent(ctx);
	int ts[] = {1, 8, 16};
	for (int k = 0; k < 3; k++) { run1("thp", 0, 1, ts[k], 0); run1("thp", 0, 1, ts[k], 1); }
	for (int k = 0; k < 3; k++) run1("4k", 0, 0, ts[k], 1);
	FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");
	if (f) { fprintf(f, "5000\n"); fclose(f); }
	f = fopen("/proc/sys/vm/nr_hugepages", "r"); int n = -1; if (f) { fscanf(f, "%d", &n); fclose(f); }
	printf("nr_hugepages %d\n", n);
	if (n >= 4096) for (int k = 0; k < 3; k++) { run1("hugetlb", MAP_HUGETLB, 0, ts[k], 0); run1("hugetlb", MAP_HUGETLB, 0, ts[k], 1); }
	f = fopen("/proc/sys/vm/nr_hugepages", "w"); if (f) { fprintf(f, "0\n"); fclose(f); }
}
*/
import "C"

func main() { C.run() }
