package integration

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// TestTheDoorHoldsAcrossPaths replays, on a real server with two tenant
// accounts, what an attacker found leaking at the seams between paths:
// each rule of the door holds on the path that skipped it.
func TestTheDoorHoldsAcrossPaths(t *testing.T) {
	srv := startAccountsServer(t)
	startWorkerOn(t, context.Background(), connectAs(t, srv, "worker", "change-me-worker"), "n1", withDevices(1, GiB),
		withConfig(func(c *worker.Config) {
			c.Quotas = map[string]int64{"TEAM_A": 64 * MiB}
			c.StarvationGuard = 100 * time.Millisecond
			c.MaxWaiters = 8
			c.SampleInterval = time.Minute // only the door's own re-examination admits
			c.AutoRelease = false
			c.CacheHold = -1 // the cache stays, for the tenant's clear to keep
		}))
	operator := connectAs(t, srv, "operator", "change-me-operator")
	alice := connectAs(t, srv, "alice", "change-me-alice")
	bob := connectAs(t, srv, "bob", "change-me-bob")
	dev := "n1-gpu0"

	var held subjects.Allocation
	call(t, alice, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 60 * MiB}, &held)

	t.Run("a transfer's copy counts against the quota", func(t *testing.T) {
		var st subjects.TransferStatus
		call(t, alice, subjects.Transfer, dev, subjects.TransferRequest{AllocationID: held.AllocationID, Mode: subjects.ModeCopy}, &st)
		done := waitTransfer(t, alice, dev, st.TransferID)
		if done.Status != subjects.TransferFailed || done.ErrorCode != subjects.CodeQuotaExceeded {
			t.Errorf("a copy past the quota: %s %s %s", done.Status, done.ErrorCode, done.ErrorMessage)
		}
		var page subjects.AllocationsReply
		r := call(t, alice, subjects.GetAllocations, dev, nil, &page)
		if r.TenantUsage == nil || r.TenantUsage.AllocatedBytes != 60*MiB || page.TotalCount != 1 {
			t.Errorf("alice holds %+v in %d allocations, want 60 MiB in 1", r.TenantUsage, page.TotalCount)
		}
	})

	t.Run("impossible requests are refused at once", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			nc   *nats.Conn
			size int64
			code subjects.Code
		}{
			{"over the tenant's whole quota", alice, 128 * MiB, subjects.CodeQuotaExceeded},
			{"larger than the device", bob, 1 << 50, subjects.CodeOutOfMemory},
		} {
			start := time.Now()
			callErr(t, tc.nc, subjects.Allocate, dev, waitBody(t, "", tc.size, 30, 100), tc.code)
			if waited := time.Since(start); waited > 10*time.Second {
				t.Errorf("%s: answered after %s, not at once", tc.name, waited)
			}
			if u := status(t, operator, dev); u.WaitingRequests != 0 {
				t.Errorf("%s: %d waiting, want none queued", tc.name, u.WaitingRequests)
			}
		}
	})

	t.Run("a waiter held back by its quota blocks no other tenant", func(t *testing.T) {
		w := pending(t, alice, subjects.Allocate, dev, waitBody(t, "alice-more", 8*MiB, 5, 100))
		for status(t, operator, dev).WaitingRequests < 1 {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // past the starvation guard
		var b subjects.Allocation
		call(t, bob, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, Priority: 100}, &b)
		call(t, operator, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, Priority: 100}, nil)

		// Its retry with another payload is a conflict, as after a grant.
		callErr(t, alice, subjects.Allocate, dev, waitBody(t, "alice-more", 9*MiB, 5, 100), subjects.CodeConflict)

		// Alice's own memory coming back grants her at once.
		call(t, alice, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: held.AllocationID}, nil)
		if r, _ := reply(t, w, 5*time.Second); !r.Success {
			t.Errorf("alice's waiter after her free: %+v", r)
		}
	})

	// fill has the operator take all that is available but 4 MiB.
	fill := func(t *testing.T) subjects.Allocation {
		var filler subjects.Allocation
		u := status(t, operator, dev)
		call(t, operator, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: u.AvailableBytes - 4*MiB}, &filler)
		return filler
	}

	t.Run("a tenant's waiters are capped at a quarter", func(t *testing.T) {
		filler := fill(t)
		ws := []<-chan *nats.Msg{
			pending(t, bob, subjects.Allocate, dev, waitBody(t, "b1", 8*MiB, 30, 0)),
			pending(t, bob, subjects.Allocate, dev, waitBody(t, "b2", 8*MiB, 30, 0)),
		}
		for status(t, operator, dev).WaitingRequests < 2 {
			time.Sleep(5 * time.Millisecond)
		}
		r := callErr(t, bob, subjects.Allocate, dev, waitBody(t, "b3", 8*MiB, 30, 0), subjects.CodeOverloaded)
		var retry struct {
			RetryAfterMS int64 `json:"retry_after_ms"`
		}
		if err := json.Unmarshal(r.Data, &retry); err != nil || retry.RetryAfterMS <= 0 {
			t.Errorf("OVERLOADED without retry_after_ms: %s", r.Data)
		}
		call(t, operator, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: filler.AllocationID}, nil)
		for _, w := range ws {
			if r, _ := reply(t, w, 5*time.Second); !r.Success {
				t.Errorf("bob's waiter after the free: %+v", r)
			}
		}
	})

	t.Run("when a waiter leaves the queue is examined at once", func(t *testing.T) {
		filler := fill(t)
		// big waits past the guard, so small, which would fit, waits
		// behind it; when big's wait ends, small is granted at once (long
		// before its own deadline: nothing else changes on the device).
		big := pending(t, operator, subjects.Allocate, dev, waitBody(t, "big", 512*MiB, 0.5, 0))
		time.Sleep(200 * time.Millisecond)
		small := pending(t, bob, subjects.Allocate, dev, waitBody(t, "small", 2*MiB, 20, 0))
		if r, _ := reply(t, big, 5*time.Second); r.Success || r.ErrorCode != subjects.CodeOutOfMemory {
			t.Errorf("big at its deadline: %+v", r)
		}
		if r, _ := reply(t, small, 15*time.Second); !r.Success {
			t.Errorf("small after big left: %+v", r)
		}
		call(t, operator, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: filler.AllocationID}, nil)
	})

	t.Run("a tenant's clear keeps the shared cache", func(t *testing.T) {
		var a subjects.Allocation
		call(t, operator, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 256 * MiB}, &a)
		call(t, operator, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
		before := status(t, operator, dev).CachedBytes
		var cr subjects.ClearReply
		call(t, alice, subjects.Clear, dev, subjects.ClearRequest{ModelID: "not-hers"}, &cr)
		if after := status(t, operator, dev).CachedBytes; cr.ReleasedBytes != 0 || after != before || before == 0 {
			t.Errorf("alice's clear released %d bytes; cache %d -> %d", cr.ReleasedBytes, before, after)
		}
	})
}

// copyOf copies allocation id on dev with a transfer and returns the
// copy's id.
func copyOf(t *testing.T, nc *nats.Conn, dev, id string) string {
	t.Helper()
	var st subjects.TransferStatus
	call(t, nc, subjects.Transfer, dev, subjects.TransferRequest{AllocationID: id, Mode: subjects.ModeCopy}, &st)
	done := waitTransfer(t, nc, dev, st.TransferID)
	if done.Status != subjects.TransferCompleted {
		t.Fatalf("copy of %s: %+v", id, done)
	}
	return done.DestinationAllocationID
}

// TestATransfersCopyIsALease: a copy of a lease is a lease of the same
// ttl, renewable as such.
func TestATransfersCopyIsALease(t *testing.T) {
	srv := startServer(t)
	startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	var a subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 600}, &a)
	var rr subjects.RenewReply
	call(t, nc, subjects.Renew, dev, subjects.RenewRequest{AllocationID: copyOf(t, nc, dev, a.AllocationID)}, &rr)
	if len(rr.Renewed) != 1 || time.Until(rr.Renewed[0].ExpiresAt) < 500*time.Second {
		t.Errorf("renewing the copy: %+v", rr)
	}
	callErr(t, nc, subjects.Allocate, dev, []byte(`{"data":{"size_bytes":1048576,"ttl_seconds":1e-300}}`), subjects.CodeInvalidRequest)
}

// TestEveryLeaseEndsAtItsExpiry: a lease made by each path that makes one
// (allocate, renew to a shorter ttl, a transfer's copy of a lease) is freed
// and announced once its expiry passes, never before, with nothing polling
// for it.
func TestEveryLeaseEndsAtItsExpiry(t *testing.T) {
	srv := startServer(t)
	startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	sub, err := nc.SubscribeSync(subjects.AllAllocationEvents)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	for _, tt := range []struct {
		name  string
		lease func(t *testing.T) string // the lease's id
	}{
		{"allocate", func(t *testing.T) string {
			var a subjects.Allocation
			call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 0.2}, &a)
			return a.AllocationID
		}},
		{"renew to a shorter ttl", func(t *testing.T) string {
			var a subjects.Allocation
			call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 600}, &a)
			call(t, nc, subjects.Renew, dev, subjects.RenewRequest{AllocationID: a.AllocationID, TTLSeconds: 0.2}, nil)
			return a.AllocationID
		}},
		{"a transfer's copy", func(t *testing.T) string {
			var a subjects.Allocation
			call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 0.5}, &a)
			return copyOf(t, nc, dev, a.AllocationID)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.lease(t)
			for deadline := time.Now().Add(10 * time.Second); ; {
				msg, err := sub.NextMsg(time.Until(deadline))
				if err != nil {
					t.Fatalf("no expiry announced for %s: %v", id, err)
				}
				typ, data, err := events.DecodeAllocation(msg)
				if err != nil || typ != events.TypeAllocationExpired || !slices.Contains(data.AllocationIDs, id) {
					continue
				}
				if data.ExpiresAt == nil || data.ObservedAt.Before(*data.ExpiresAt) {
					t.Fatalf("%s freed at %v, before its expiry %v", id, data.ObservedAt, data.ExpiresAt)
				}
				break
			}
			var got subjects.AllocationsReply
			call(t, nc, subjects.GetAllocations, dev, nil, &got)
			for _, a := range got.Allocations {
				if a.AllocationID == id {
					t.Fatalf("%s announced expired, still listed", id)
				}
			}
		})
	}
}
