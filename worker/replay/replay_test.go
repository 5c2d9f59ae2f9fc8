package replay

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

func TestReplayCache(t *testing.T) {
	now := time.Unix(1000, 0)
	c := New(time.Minute, 2, 1<<20)
	data := []byte(`{"size_bytes":1}`)
	if got, err := c.Lookup(Key{RequestID: "r1"}, subjects.Allocate, data, now); got != nil || err != nil {
		t.Fatalf("empty cache: %q, %v", got, err)
	}
	c.Store(Key{RequestID: "r1"}, subjects.Allocate, data, []byte("reply1"), now)
	if got, _ := c.Lookup(Key{RequestID: "r1"}, subjects.Allocate, data, now); string(got) != "reply1" {
		t.Errorf("lookup = %q, want reply1", got)
	}
	if _, err := c.Lookup(Key{RequestID: "r1"}, subjects.Allocate, []byte(`{"size_bytes":2}`), now); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("same id, other payload: %v, want CONFLICT", err)
	}
	if _, err := c.Lookup(Key{RequestID: "r1"}, subjects.Clear, data, now); !errors.Is(err, ledger.ErrConflict) {
		t.Errorf("same id, other op: %v, want CONFLICT", err)
	}
	// A retry with keys reordered, respelled or spaced differently is the
	// same request.
	if got, err := c.Lookup(Key{RequestID: "r1"}, subjects.Allocate, []byte(` { "SizeBytes" : 1 } `), now); string(got) != "reply1" || err != nil {
		t.Errorf("respelled retry: %q, %v, want reply1", got, err)
	}
	// Bounded in entries: the oldest goes first.
	c.Store(Key{RequestID: "r2"}, subjects.Allocate, data, []byte("reply2"), now)
	c.Store(Key{RequestID: "r3"}, subjects.Allocate, data, []byte("reply3"), now)
	if got, _ := c.Lookup(Key{RequestID: "r1"}, subjects.Allocate, data, now); got != nil {
		t.Errorf("r1 kept beyond the entry bound")
	}
	// Bounded in bytes.
	small := New(time.Minute, 100, 3*(replayOverhead+100))
	for i := range 10 {
		small.Store(Key{RequestID: fmt.Sprint("id", i)}, subjects.Allocate, data, make([]byte, 50), now)
	}
	if n := len(small.entries); n == 0 || n > 3 || small.bytes > small.maxBytes {
		t.Errorf("%d entries, %d bytes kept, bound %d", n, small.bytes, small.maxBytes)
	}
	// Bounded in age.
	if got, _ := c.Lookup(Key{RequestID: "r3"}, subjects.Allocate, data, now.Add(2*time.Minute)); got != nil || len(c.entries) != 0 {
		t.Errorf("entries kept beyond the window: %d", len(c.entries))
	}
}

// TestAFloodingTenantEvictsItsOwnReplies: at a bound, the tenant holding
// the most gives up its oldest reply, so one tenant's stream of request
// ids cannot push another's retry protection out of the cache.
func TestAFloodingTenantEvictsItsOwnReplies(t *testing.T) {
	now := time.Unix(1000, 0)
	data := []byte(`{"allocation_id":"x"}`)
	for _, bound := range []string{"entries", "bytes"} {
		t.Run(bound, func(t *testing.T) {
			c := New(time.Minute, 4, 1<<20)
			if bound == "bytes" {
				c = New(time.Minute, 1000, 4*(replayOverhead+64))
			}
			bob := Key{Tenant: "B", RequestID: "bob-transfer-1"}
			c.Store(bob, subjects.Transfer, data, []byte("bob's"), now)
			for i := range 100 {
				c.Store(Key{Tenant: "A", RequestID: fmt.Sprintf("alice-%d", i)}, subjects.Renew, data, []byte("alice's"), now)
			}
			if got, err := c.Lookup(bob, subjects.Transfer, data, now); string(got) != "bob's" || err != nil {
				t.Errorf("bob's reply after alice's flood: %q, %v", got, err)
			}
			if got, _ := c.Lookup(Key{Tenant: "A", RequestID: "alice-99"}, subjects.Renew, data, now); string(got) != "alice's" {
				t.Errorf("alice's newest reply was evicted")
			}
			if got, _ := c.Lookup(Key{Tenant: "A", RequestID: "alice-0"}, subjects.Renew, data, now); got != nil {
				t.Errorf("alice's oldest reply kept past the %s bound", bound)
			}
			if len(c.entries) > 4 && bound == "entries" || c.bytes > c.maxBytes {
				t.Errorf("bounds passed: %d entries, %d bytes", len(c.entries), c.bytes)
			}
			// The window still ends every tenant's replies.
			if got, _ := c.Lookup(bob, subjects.Transfer, data, now.Add(2*time.Minute)); got != nil || len(c.entries) != 0 || len(c.tenants) != 0 {
				t.Errorf("after the window: %q, %d entries, %d tenants", got, len(c.entries), len(c.tenants))
			}
		})
	}
}

// TestTheWindowEndsRepliesInOrderAcrossTenants: replies end when the
// window passes them, whoever's they are, and the younger stay.
func TestTheWindowEndsRepliesInOrderAcrossTenants(t *testing.T) {
	t0 := time.Unix(1000, 0)
	data := []byte(`{"allocation_id":"x"}`)
	c := New(time.Minute, 100, 1<<20)
	stored := []struct {
		key Key
		at  time.Duration
	}{
		{Key{Tenant: "A", RequestID: "a1"}, 0},
		{Key{Tenant: "B", RequestID: "b1"}, 10 * time.Second},
		{Key{Tenant: "A", RequestID: "a2"}, 20 * time.Second},
		{Key{Tenant: "C", RequestID: "c1"}, 30 * time.Second},
	}
	for _, s := range stored {
		c.Store(s.key, subjects.Renew, data, []byte(s.key.RequestID), t0.Add(s.at))
	}
	// At 71 s the first two are past the window (60 s), the others not.
	now := t0.Add(71 * time.Second)
	for i, s := range stored {
		got, err := c.Lookup(s.key, subjects.Renew, data, now)
		if kept := i >= 2; err != nil || (got != nil) != kept {
			t.Errorf("%v stored at %v, looked up at 71 s: %q, %v; want kept %v", s.key, s.at, got, err, kept)
		}
	}
	if len(c.entries) != 2 || len(c.tenants) != 2 || c.tenants["B"] != nil {
		t.Errorf("%d entries of %d tenants kept (B's: %v), want a2 and c1", len(c.entries), len(c.tenants), c.tenants["B"])
	}
}

// BenchmarkStoreAtTheBound: a retry-protected mutation on a full cache, as
// on a busy device: a lookup that misses, a store, and the eviction of the
// oldest reply; with one tenant, and with 100 tenants holding replies.
func BenchmarkStoreAtTheBound(b *testing.B) {
	for _, tenants := range []int{1, 100} {
		b.Run(fmt.Sprintf("tenants=%d", tenants), func(b *testing.B) {
			c := New(time.Hour, 100_000, 4<<20)
			data := []byte(`{"size_bytes":1048576,"allocation_type":"VRAM"}`)
			reply := bytes.Repeat([]byte("r"), 500)
			now := time.Now()
			for i := range tenants - 1 {
				c.Store(Key{Tenant: fmt.Sprint("tenant-", i), RequestID: "r"}, subjects.Allocate, data, reply, now)
			}
			ids := make([]string, 1<<16)
			for i := range ids {
				ids[i] = fmt.Sprintf("req-%08d", i)
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				key := Key{Tenant: "A", RequestID: ids[i%len(ids)]}
				if _, err := c.Lookup(key, subjects.Allocate, data, now); err != nil {
					b.Fatal(err)
				}
				c.Store(key, subjects.Allocate, data, reply, now)
			}
		})
	}
}
