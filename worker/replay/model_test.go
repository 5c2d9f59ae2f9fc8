package replay

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// model is a plain reference of the documented policy: replies are kept
// for the window (a lookup ends those older), at most maxEntries of them
// and maxBytes in all; at a bound the tenant holding the most (entries or
// bytes, as the bound) gives up its oldest reply. It keeps a slice in
// the order of storing and scans it all.
type model struct {
	window     time.Duration
	maxEntries int
	maxBytes   int64
	list       []*replay // oldest first
}

func (m *model) size() (n int64) {
	for _, r := range m.list {
		n += r.size()
	}
	return n
}

func (m *model) find(key Key) int {
	for i, r := range m.list {
		if r.key == key {
			return i
		}
	}
	return -1
}

func (m *model) drop(i int) { m.list = append(m.list[:i:i], m.list[i+1:]...) }

func (m *model) lookup(key Key, op subjects.Op, data []byte, now time.Time) ([]byte, error) {
	kept := m.list[:0:0]
	for _, r := range m.list {
		if now.Sub(r.at) <= m.window {
			kept = append(kept, r)
		}
	}
	m.list = kept
	i := m.find(key)
	if i < 0 {
		return nil, nil
	}
	r := m.list[i]
	if r.op != op || !sameRequest(r.data, data) {
		return nil, ledger.ErrConflict
	}
	return r.reply, nil
}

// store keeps the reply. A tie between tenants at a bound may go either
// way: store follows every way and keeps the outcome the cache (real)
// has, or fails when none is.
func (m *model) store(key Key, op subjects.Op, data, reply []byte, now time.Time, real map[Key]*replay) error {
	if i := m.find(key); i >= 0 {
		m.drop(i)
	}
	m.list = append(m.list, &replay{key: key, op: op, data: data, reply: reply, at: now})
	var outcomes [][]*replay
	var evict func(list []*replay)
	evict = func(list []*replay) {
		mm := &model{maxEntries: m.maxEntries, maxBytes: m.maxBytes, list: list}
		byEntries := len(list) > m.maxEntries
		if !byEntries && (mm.size() <= m.maxBytes || len(list) <= 1) {
			outcomes = append(outcomes, list)
			return
		}
		count, size, oldest := map[string]int{}, map[string]int64{}, map[string]int{}
		for i, r := range list {
			count[r.key.Tenant]++
			size[r.key.Tenant] += r.size()
			if _, ok := oldest[r.key.Tenant]; !ok {
				oldest[r.key.Tenant] = i
			}
		}
		value := func(t string) int64 {
			if byEntries {
				return int64(count[t])
			}
			return size[t]
		}
		var top int64 = -1
		for t := range count {
			top = max(top, value(t))
		}
		for t := range count {
			if value(t) == top {
				i := oldest[t]
				evict(append(list[:i:i], list[i+1:]...))
			}
		}
	}
	evict(m.list)
	for _, o := range outcomes {
		if len(o) != len(real) {
			continue
		}
		same := true
		for _, r := range o {
			if _, ok := real[r.key]; !ok {
				same = false
			}
		}
		if same {
			m.list = o
			return nil
		}
	}
	return fmt.Errorf("the cache kept %d replies, none of the %d outcomes the policy allows", len(real), len(outcomes))
}

// check compares the cache with the model and checks its lists, its
// shares and its byte counts agree with its map.
func check(t *testing.T, step int, c *Cache, m *model, trace []string) {
	t.Helper()

	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		for _, l := range trace {
			t.Log(l)
		}
		for _, r := range m.list {
			t.Logf("model %v %d at %v", r.key, r.size(), r.at.Unix())
		}
		for k, r := range c.entries {
			t.Logf("real %v %d at %v", k, r.size(), r.at.Unix())
		}
		t.Logf("bounds %d %d window %v", c.maxEntries, c.maxBytes, c.window)
		t.Fatalf("step %d: %s", step, fmt.Sprintf(format, args...))
	}
	if len(c.entries) != len(m.list) {
		fail("%d entries, the model %d", len(c.entries), len(m.list))
	}
	for _, r := range m.list {
		got, ok := c.entries[r.key]
		if !ok || !bytes.Equal(got.reply, r.reply) || !got.at.Equal(r.at) {
			fail("%v: held %v, the model's reply %q at %v", r.key, ok, r.reply, r.at)
		}
	}
	// The whole list, forward and back, is the map, in the model's order.
	var prev *replay
	i := 0
	for r := c.all.oldest; r != nil; r = r.inAll.newer {
		if r.inAll.older != prev {
			fail("all: broken back link at %v", r.key)
		}
		if i >= len(m.list) || m.list[i].key != r.key {
			fail("all: %v at %d, out of the model's order", r.key, i)
		}
		if c.entries[r.key] != r {
			fail("all: %v is not the map's", r.key)
		}
		prev, i = r, i+1
	}
	if prev != c.all.newest || i != c.all.n || i != len(c.entries) {
		fail("all: %d walked, n %d, %d entries", i, c.all.n, len(c.entries))
	}
	var bytesAll int64
	n := 0
	for tenant, sh := range c.tenants {
		if sh.n == 0 {
			fail("share %q: %d replies", tenant, sh.n)
		}
		var b int64
		var prev *replay
		k := 0
		for r := sh.oldest; r != nil; r = r.inShare.newer {
			if r.inShare.older != prev || r.share != sh || r.key.Tenant != tenant || c.entries[r.key] != r {
				fail("share %q: inconsistent at %v", tenant, r.key)
			}
			b += r.size()
			prev, k = r, k+1
		}
		if prev != sh.newest || k != sh.n || b != sh.bytes {
			fail("share %q: %d walked, n %d, bytes %d counted %d", tenant, k, sh.n, b, sh.bytes)
		}
		bytesAll += b
		n += k
	}
	if n != len(c.entries) || bytesAll != c.bytes || c.bytes != m.size() {
		fail("%d in shares, %d entries; bytes %d, counted %d, the model %d", n, len(c.entries), bytesAll, c.bytes, m.size())
	}
}

// TestTheCacheFollowsAReferenceModel feeds random stores and lookups over
// several tenants, times and bounds to the cache and to a plain model of
// its policy, and compares them after every step.
func TestTheCacheFollowsAReferenceModel(t *testing.T) {
	tenants := []string{"", "a", "b", "c"}
	ops := []subjects.Op{subjects.Allocate, subjects.Deallocate}
	datas := [][]byte{[]byte(`{"size_bytes":1}`), []byte(` { "size_bytes" : 1 } `), []byte(`{"size_bytes":2}`), []byte(`{"purpose":"x","size_bytes":3}`)}
	for seed := range uint64(400) {
		rng := rand.New(rand.NewPCG(seed, 99))
		window := time.Duration(1+rng.IntN(50)) * time.Second
		maxEntries := 1 + rng.IntN(12)
		maxBytes := int64(rng.IntN(8)) * (replayOverhead + 64)
		if rng.IntN(4) == 0 {
			maxBytes = 1 << 40
		}
		c := New(window, maxEntries, maxBytes)
		m := &model{window: window, maxEntries: maxEntries, maxBytes: maxBytes}
		now := time.Unix(1000, 0)
		var trace []string
		for step := range 400 {
			now = now.Add(time.Duration(rng.IntN(4000)) * time.Millisecond)
			tenant := tenants[rng.IntN(len(tenants))]
			if rng.IntN(5) == 0 {
				tenant = tenants[1] // one that floods
			}
			key := Key{Tenant: tenant, RequestID: fmt.Sprint("r", rng.IntN(20))}
			op := ops[rng.IntN(len(ops))]
			data := datas[rng.IntN(len(datas))]
			if rng.IntN(2) == 0 {
				reply := bytes.Repeat([]byte{byte('a' + step%26)}, rng.IntN(200))
				before := len(c.entries)
				c.Store(key, op, data, reply, now)
				trace = append(trace, fmt.Sprintf("step %d: store %v (%d bytes) at %v: %d -> %d replies", step, key, (&replay{key: key, data: data, reply: reply}).size(), now.Sub(time.Unix(1000, 0)), before, len(c.entries)))
				if err := m.store(key, op, data, reply, now, c.entries); err != nil {
					for _, l := range trace {
						t.Log(l)
					}
					t.Fatalf("seed %d step %d: %v", seed, step, err)
				}
			} else {
				trace = append(trace, fmt.Sprintf("step %d: lookup %v at %v", step, key, now.Sub(time.Unix(1000, 0))))
				got, err := c.Lookup(key, op, data, now)
				want, werr := m.lookup(key, op, data, now)
				if !bytes.Equal(got, want) || errors.Is(err, ledger.ErrConflict) != (werr != nil) || (err == nil) != (werr == nil) {
					t.Fatalf("seed %d step %d: lookup %v: %q, %v; the model %q, %v", seed, step, key, got, err, want, werr)
				}
			}
			if len(trace) > 8 {
				trace = trace[1:]
			}
			check(t, step, c, m, trace)
		}
	}
}
