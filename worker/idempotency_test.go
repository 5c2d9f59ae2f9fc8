package worker

import (
	"fmt"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
)

func TestReplayCache(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newReplayCache(time.Minute, 2, 1<<20)
	data := []byte(`{"size_bytes":1}`)
	if got, err := c.lookup("r1", subjects.Allocate, data, now); got != nil || err != nil {
		t.Fatalf("empty cache: %q, %v", got, err)
	}
	c.store("r1", subjects.Allocate, data, []byte("reply1"), now)
	if got, _ := c.lookup("r1", subjects.Allocate, data, now); string(got) != "reply1" {
		t.Errorf("lookup = %q, want reply1", got)
	}
	if _, err := c.lookup("r1", subjects.Allocate, []byte(`{"size_bytes":2}`), now); wireError(err).Code != subjects.CodeConflict {
		t.Errorf("same id, other payload: %v, want CONFLICT", err)
	}
	if _, err := c.lookup("r1", subjects.Clear, data, now); wireError(err).Code != subjects.CodeConflict {
		t.Errorf("same id, other op: %v, want CONFLICT", err)
	}
	// A retry with keys reordered, respelled or spaced differently is the
	// same request.
	if got, err := c.lookup("r1", subjects.Allocate, []byte(` { "SizeBytes" : 1 } `), now); string(got) != "reply1" || err != nil {
		t.Errorf("respelled retry: %q, %v, want reply1", got, err)
	}
	// Bounded in entries: the oldest goes first.
	c.store("r2", subjects.Allocate, data, []byte("reply2"), now)
	c.store("r3", subjects.Allocate, data, []byte("reply3"), now)
	if got, _ := c.lookup("r1", subjects.Allocate, data, now); got != nil {
		t.Errorf("r1 kept beyond the entry bound")
	}
	// Bounded in bytes.
	small := newReplayCache(time.Minute, 100, 3*(replayOverhead+100))
	for i := range 10 {
		small.store(fmt.Sprint("id", i), subjects.Allocate, data, make([]byte, 50), now)
	}
	if n := len(small.entries); n == 0 || n > 3 || small.bytes > small.maxBytes {
		t.Errorf("%d entries, %d bytes kept, bound %d", n, small.bytes, small.maxBytes)
	}
	// Bounded in age.
	if got, _ := c.lookup("r3", subjects.Allocate, data, now.Add(2*time.Minute)); got != nil || len(c.entries) != 0 {
		t.Errorf("entries kept beyond the window: %d", len(c.entries))
	}
}
