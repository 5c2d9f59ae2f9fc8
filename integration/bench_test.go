package integration

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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

// BenchmarkAdmissionGrant measures the time from sending the free that
// makes room to the waiting allocate's grant at its client (run it with
// -benchtime 100x for the 100 rounds the target speaks of).
func BenchmarkAdmissionGrant(b *testing.B) {
	srv := startServer(b)
	nc := connect(b, srv)
	startWorker(b, srv, "n1", withDevices(1, GiB))
	dev := "n1-gpu0"
	var lat []time.Duration
	round := 0
	for b.Loop() {
		b.StopTimer()
		round++
		var blocker subjects.Allocation
		call(b, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 900 * MiB}, &blocker)
		body, _ := subjects.NewRequest(fmt.Sprint("grant-", round), subjects.Allocate,
			subjects.AllocateRequest{SizeBytes: 500 * MiB, WaitSeconds: 10, TTLSeconds: 60})
		inbox := nats.NewInbox()
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			b.Fatal(err)
		}
		if err := nc.PublishRequest(subjects.Request(subjects.Allocate, dev), inbox, body); err != nil {
			b.Fatal(err)
		}
		for {
			var u subjects.Usage
			call(b, nc, subjects.GetUsage, dev, nil, &u)
			if u.WaitingRequests == 1 {
				break
			}
		}
		b.StartTimer()
		start := time.Now()
		call(b, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: blocker.AllocationID}, nil)
		msg, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		var granted subjects.Allocation
		if _, err := subjects.DecodeReply(msg.Data, &granted); err != nil {
			b.Fatal(err)
		}
		_ = sub.Unsubscribe()
		call(b, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: granted.AllocationID}, nil)
		b.StartTimer()
	}
	reportLatency(b, lat)
}
