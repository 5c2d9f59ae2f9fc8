package integration

import (
	"testing"
	"time"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device/sim"
)

// TestReservationsHoldMemoryForAnotherProcess: a reservation for a process
// the orchestrator is starting blocks allocations that would eat it, counts
// what its process does not use yet, shows what it observes, and says when
// the process grows past it.
func TestReservationsHoldMemoryForAnotherProcess(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) {
		c.TelemetryMaxAge, c.SampleInterval = 10*time.Millisecond, 20*time.Millisecond
	}))
	s, ok := h.dev.(*sim.Backend)
	if !ok {
		t.Skip("simulated processes need the sim backend")
	}
	nc := connect(t, srv)
	dev := "n1-gpu0"
	evs, err := nc.SubscribeSync(subjects.AllocationEvents(dev, ""))
	if err != nil {
		t.Fatal(err)
	}
	const pid = 4242
	usage := func() subjects.Usage {
		time.Sleep(30 * time.Millisecond) // past the telemetry's max age
		var u subjects.Usage
		call(t, nc, subjects.GetUsage, dev, nil, &u)
		return u
	}

	var r subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 600 * MiB, AllocationType: subjects.Reservation, PID: pid, ModelID: "llama"}, &r)
	if r.AllocationType != subjects.Reservation || r.PID != pid || r.ReservedBytes != 600*MiB {
		t.Fatalf("reservation %+v", r)
	}
	if u := usage(); u.ReservationUnusedBytes != 600*MiB || u.AvailableBytes != 424*MiB || u.UsedBytes != 0 {
		t.Errorf("before the process starts: %+v", u)
	}
	// An allocation that would eat the reservation is refused.
	callErr(t, nc, subjects.Allocate, dev, []byte(`{"data":{"size_bytes":524288000}}`), subjects.CodeOutOfMemory)
	callErr(t, nc, subjects.Allocate, dev, mustJSON(t, map[string]any{"data": map[string]any{"size_bytes": 500 * MiB, "allocation_type": "RESERVATION"}}), subjects.CodeOutOfMemory)

	// The process starts and uses its memory: what it uses is no longer
	// counted twice.
	s.SetProcess(0, pid, 600*MiB)
	if u := usage(); u.ReservationUnusedBytes != 0 || u.AvailableBytes != 424*MiB || u.UsedBytes != 600*MiB {
		t.Errorf("with the process at its reservation: %+v", u)
	}
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, dev, subjects.AllocationsRequest{AllocationType: subjects.Reservation}, &page)
	if page.TotalCount != 1 || page.Allocations[0].ObservedBytes != 600*MiB || page.Allocations[0].ObservedAt == nil {
		t.Errorf("the reservation as listed: %+v", page.Allocations)
	}
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 400 * MiB}, &a)

	// Past its reservation: one event per crossing.
	s.SetProcess(0, pid, 610*MiB)
	msg, err := evs.NextMsg(2 * time.Second)
	if err != nil {
		t.Fatalf("no exceeded event: %v", err)
	}
	typ, e, err := events.DecodeAllocation(msg)
	if err != nil || typ != events.TypeReservationExceeded || e.AllocationID != r.AllocationID || e.PID != pid || e.ObservedBytes != 610*MiB {
		t.Fatalf("event %s %+v, %v", typ, e, err)
	}
	if msg, err := evs.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("a second event while still past: %s", msg.Data)
	}

	// A reservation cannot be transferred; it is freed like any other.
	callErr(t, nc, subjects.Transfer, dev, mustJSON(t, map[string]any{"data": map[string]any{"allocation_id": r.AllocationID, "target_allocation_type": "PINNED"}}), subjects.CodeUnsupported)
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: r.AllocationID}, nil)
	s.SetProcess(0, pid, 0)
	if u := usage(); u.ReservationUnusedBytes != 0 || u.Allocations != 1 {
		t.Errorf("after freeing the reservation: %+v", u)
	}
	checkLedger(t, nc, h, dev, 0)
}
