package replay

import (
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
