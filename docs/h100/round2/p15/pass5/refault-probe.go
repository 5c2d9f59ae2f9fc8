//go:build ignore

// Command refault-probe asks whether the ceiling on faulting fresh memory in
// (about 20 GB/s on 4 to 16 threads, pin-probe2.txt) is the guest kernel's
// or the hypervisor's (refault-probe.txt): it faults 8 GiB in on 8 threads,
// gives it back, and faults 8 GiB in again at once and after a pause. A
// guest that reports freed pages to its host (a balloon's free page
// reporting) pays the host's fault again for pages it gave back; pages not
// yet given back fault at the guest's own speed.
// Build: go build -o refault docs/h100/round2/p15/pass5/refault-probe.go
package main

/*
#cgo LDFLAGS: -lpthread
#include <stdio.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec*1e3 + t.tv_nsec/1e6; }
static const size_t total = 8ul << 30, chunk = 128ul << 20;
static char *base; static int next; static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void *crew(void *a) {
	for (;;) {
		pthread_mutex_lock(&mu); size_t i = next++; pthread_mutex_unlock(&mu);
		if (i * chunk >= total) return 0;
		madvise(base + i*chunk, chunk, MADV_POPULATE_WRITE);
	}
}
static double fault(int threads) {
	next = 0;
	pthread_t th[32]; double t0 = now();
	for (int i = 0; i < threads; i++) pthread_create(&th[i], 0, crew, 0);
	for (int i = 0; i < threads; i++) pthread_join(th[i], 0);
	return total / ((now() - t0) * 1e6);
}
static void once(const char *what, int threads) {
	base = mmap(0, total, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
	madvise(base, total, MADV_HUGEPAGE);
	printf("%-34s threads %2d: %5.1f GB/s\n", what, threads, fault(threads));
	munmap(base, total);
}
static void run() {
	setvbuf(stdout, NULL, _IONBF, 0);
	int ts[] = {8, 16};
	for (int k = 0; k < 2; k++) {
		int t = ts[k];
		sleep(5); once("fresh mapping after a 5 s pause", t);
		once("fresh mapping at once", t);
		once("fresh mapping at once, again", t);
		base = mmap(0, total, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
		madvise(base, total, MADV_HUGEPAGE);
		printf("%-34s threads %2d: %5.1f GB/s\n", "one mapping, first", t, fault(t));
		madvise(base, total, MADV_DONTNEED);
		printf("%-34s threads %2d: %5.1f GB/s\n", "same mapping, zapped, at once", t, fault(t));
		madvise(base, total, MADV_DONTNEED); sleep(5);
		printf("%-34s threads %2d: %5.1f GB/s\n", "same mapping, zapped, after 5 s", t, fault(t));
		munmap(base, total);
	}
}
*/
import "C"

func main() { C.run() }
