package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
)

// pending sends body to op on dev and returns a channel with its reply,
// when it comes.
func pending(t *testing.T, nc *nats.Conn, op subjects.Op, dev string, body []byte) <-chan *nats.Msg {
	t.Helper()
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, 1)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.PublishRequest(subjects.Request(op, dev), inbox, body); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	return ch
}

func waitBody(t *testing.T, id string, size int64, wait float64, priority int) []byte {
	t.Helper()
	return mustJSON(t, map[string]any{"request_id": id, "data": map[string]any{
		"size_bytes": size, "wait_seconds": wait, "priority": priority, "ttl_seconds": 600}})
}

func status(t *testing.T, nc *nats.Conn, dev string) subjects.Usage {
	t.Helper()
	var u subjects.Usage
	call(t, nc, subjects.GetUsage, dev, nil, &u)
	return u
}

func reply(t *testing.T, ch <-chan *nats.Msg, timeout time.Duration) (*subjects.Reply, subjects.Allocation) {
	t.Helper()
	select {
	case msg := <-ch:
		var a subjects.Allocation
		r, _ := subjects.DecodeReply(msg.Data, &a)
		if r == nil {
			t.Fatalf("undecodable reply %s", msg.Data)
		}
		return r, a
	case <-time.After(timeout):
		t.Fatal("no reply")
		return nil, subjects.Allocation{}
	}
}

// TestWaitersAreGrantedInOrder: an allocate that does not fit waits
// (other requests, allocates that fit included, are served meanwhile), is
// granted by the free that makes room, in priority order; a retry joins
// its wait; a deadline fails it.
func TestWaitersAreGrantedInOrder(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	var big1, big2 subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 600 * MiB}, &big1)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 300 * MiB}, &big2)

	callErr(t, nc, subjects.Allocate, dev, []byte(`{"data":{"size_bytes":1048576,"wait_seconds":1}}`), subjects.CodeInvalidRequest) // no ttl

	low := pending(t, nc, subjects.Allocate, dev, waitBody(t, "low", 300*MiB, 30, 0))
	for status(t, nc, dev).WaitingRequests < 1 {
		time.Sleep(5 * time.Millisecond)
	}
	high := pending(t, nc, subjects.Allocate, dev, waitBody(t, "high", 300*MiB, 30, 10))
	again := pending(t, nc, subjects.Allocate, dev, waitBody(t, "high", 300*MiB, 30, 10)) // a retry
	for status(t, nc, dev).WaitingRequests < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	// While they wait, the device serves everyone else.
	u := status(t, nc, dev)
	if u.WaitingRequests != 2 || u.WaitingBytes != 600*MiB {
		t.Errorf("waiting %d requests, %d bytes; want 2, 600 MiB", u.WaitingRequests, u.WaitingBytes)
	}
	// A request that fits is granted while young waiters wait (work
	// conserving).
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB}, nil)

	// Room for one: the higher priority goes first, though it came
	// second; its retry gets the same allocation; the other waits on.
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: big2.AllocationID}, nil)
	r1, a1 := reply(t, high, 5*time.Second)
	r2, a2 := reply(t, again, 5*time.Second)
	if !r1.Success || !r2.Success || a1.AllocationID != a2.AllocationID || a1.WaitedSeconds <= 0 {
		t.Fatalf("high and its retry: %+v %+v / %+v %+v", r1, a1, r2, a2)
	}
	if u := status(t, nc, dev); u.WaitingRequests != 1 || u.WaitingBytes != 300*MiB {
		t.Errorf("after room for one: %d waiting (%d bytes), want low alone", u.WaitingRequests, u.WaitingBytes)
	}
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: big1.AllocationID}, nil)
	r3, a3 := reply(t, low, 5*time.Second)
	if !r3.Success || a3.AllocationID == a1.AllocationID {
		t.Fatalf("low: %+v %+v", r3, a3)
	}

	// A deadline fails the wait with the reason it waited for.
	late := pending(t, nc, subjects.Allocate, dev, waitBody(t, "late", 900*MiB, 0.2, 0))
	r4, _ := reply(t, late, 5*time.Second)
	if r4.Success || r4.ErrorCode != subjects.CodeOutOfMemory {
		t.Errorf("past its deadline: %+v", r4)
	}
	if u := status(t, nc, dev); u.WaitingRequests != 0 || u.WaitingBytes != 0 {
		t.Errorf("still waiting: %+v", u)
	}
	checkLedger(t, nc, h, dev, 0)
}

// TestAThousandWaitersAreAllAnswered: 1,000 waiters on one device are each
// granted or failed at their deadline, never left hanging, and the ledger
// is exact.
func TestAThousandWaitersAreAllAnswered(t *testing.T) {
	t.Parallel() // a server and worker of its own
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	var big subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 1000 * MiB}, &big)
	const n = 1000
	var wg sync.WaitGroup
	results := make(chan *subjects.Reply, n)
	for i := range n {
		wg.Go(func() {
			msg, err := nc.Request(subjects.Request(subjects.Allocate, dev), waitBody(t, fmt.Sprint("w", i), 2*MiB, 1, i%7), 10*time.Second)
			if err != nil {
				results <- &subjects.Reply{ErrorMessage: err.Error()}
				return
			}
			var r subjects.Reply
			_ = json.Unmarshal(msg.Data, &r)
			results <- &r
		})
	}
	for status(t, nc, dev).WaitingRequests < n/2 {
		time.Sleep(10 * time.Millisecond)
	}
	var st subjects.StatusReply
	call(t, nc, subjects.GetStatus, dev, nil, &st) // answers while they wait
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: big.AllocationID}, nil)
	wg.Wait()
	close(results)
	granted, failed := 0, 0
	for r := range results {
		switch {
		case r.Success:
			granted++
		case r.ErrorCode == subjects.CodeOutOfMemory:
			failed++
		default:
			t.Errorf("waiter answered %+v", r)
		}
	}
	if granted+failed != n || granted == 0 {
		t.Errorf("%d granted, %d failed of %d", granted, failed, n)
	}
	if u := checkLedger(t, nc, h, dev, 0); u.Allocations != granted || u.WaitingRequests != 0 {
		t.Errorf("%d allocations, %d waiting; want %d granted, none waiting", u.Allocations, u.WaitingRequests, granted)
	}
}

// TestWaitersAreAnsweredWhenTheWorkerStops: a stopping worker answers every
// waiter DEVICE_UNAVAILABLE.
func TestWaitersAreAnsweredWhenTheWorkerStops(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	h := startWorkerCtx(t, ctx, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 1000 * MiB}, nil)
	w := pending(t, nc, subjects.Allocate, "n1-gpu0", waitBody(t, "w", 100*MiB, 60, 0))
	for status(t, nc, "n1-gpu0").WaitingRequests < 1 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	h.wait()
	if r, _ := reply(t, w, 5*time.Second); r.Success || r.ErrorCode != subjects.CodeDeviceUnavailable {
		t.Errorf("a waiter at the stop: %+v", r)
	}
}
