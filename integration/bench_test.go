package integration

import (
	"slices"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
)

// BenchmarkPressureEventLatency measures the time from sending the
// allocation that crosses the warning threshold to the pressure event
// arriving at a subscriber, with JetStream keeping events (the default).
func BenchmarkPressureEventLatency(b *testing.B) {
	srv := startJetStreamServer(b)
	nc := connect(b, srv)
	next := subscribeEvents(b, nc, "n1-gpu0")
	h := startWorker(b, srv, "n1", withDevices(1, GiB))
	next(2 * time.Second) // startup
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		var a subjects.Allocation
		call(b, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 900 * MiB}, &a)
		if r := next(2 * time.Second); r.data.Level != subjects.LevelWarning {
			b.Fatalf("got %+v", r.data)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		call(b, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
		call(b, nc, subjects.Clear, "n1-gpu0", nil, nil)
		next(2 * time.Second) // back to normal
		b.StartTimer()
	}
	reportLatency(b, lat)
	_ = h
}

// reportLatency adds p50 and p99 in microseconds to the benchmark's output.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
