package integration

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// TestStopFinishesWhatItReceived: a worker stopped under load answers the
// requests it received, publishes the pressure event of every mutation it
// answered, and runs every transfer it queued before Run returns.
func TestStopFinishesWhatItReceived(t *testing.T) {
	srv := startUnobservedServer(t) // the requests end when no one answers
	ctx, cancel := context.WithCancel(context.Background())
	h := startWorkerCtx(t, ctx, srv, "stopping", withDevices(2, GiB))
	faults := h.faults(t)
	nc := connect(t, srv)
	devs := h.DeviceIDs()

	changed := make(chan *nats.Msg, 10_000)
	sub, err := nc.ChanSubscribe(subjects.PressureEvents(devs[0]), changed)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// Each answered allocate takes the device to critical, each answered
	// clear back to normal: every answered mutation changes the level.
	var answered int
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			op, data := subjects.Allocate, any(subjects.AllocateRequest{SizeBytes: 990 * MiB})
			if i%2 == 1 {
				op, data = subjects.Clear, subjects.ClearRequest{Force: true}
			}
			body, _ := subjects.NewRequest("", op, data)
			msg, err := nc.Request(subjects.Request(op, devs[0]), body, 5*time.Second)
			if err != nil {
				if !errors.Is(err, nats.ErrNoResponders) {
					t.Errorf("request %d: %v", i, err)
				}
				return
			}
			if _, err := subjects.DecodeReply(msg.Data, nil); err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			answered++
		}
	})
	time.Sleep(200 * time.Millisecond)
	// Transfers queued behind a slow link when the stop comes.
	faults.SetCopyDelay(20 * time.Millisecond)
	var moved []string
	for range 12 {
		var a subjects.Allocation
		call(t, nc, subjects.Allocate, devs[1], subjects.AllocateRequest{SizeBytes: MiB}, &a)
		call(t, nc, subjects.Transfer, devs[1], subjects.TransferRequest{AllocationID: a.AllocationID, TargetAllocationType: subjects.Pinned, Mode: subjects.ModeMove}, nil)
		moved = append(moved, a.AllocationID)
	}

	cancel()
	h.wait()
	wg.Wait()

	got := 0
	for deadline := time.After(2 * time.Second); got < answered; {
		select {
		case msg := <-changed:
			_, p, err := events.Decode(msg)
			if err != nil {
				t.Fatal(err)
			}
			if p.Reason == events.ReasonChanged {
				got++
			}
		case <-deadline:
			t.Fatalf("%d mutations answered, %d level changes published", answered, got)
		}
	}
	if answered < 2 {
		t.Fatalf("only %d mutations answered before the stop", answered)
	}
	for _, id := range moved {
		if _, _, err := h.Locate(devs[1], id); !errors.Is(err, ledger.ErrAllocationNotFound) {
			t.Errorf("transfer of %s did not complete before Run returned: source still there (%v)", id, err)
		}
	}
}
