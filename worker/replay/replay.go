// Package replay keeps the replies of successful mutating requests by
// request_id, so a client retrying after a lost reply gets the first reply
// and nothing is done twice.
package replay

import (
	"bytes"
	"container/list"
	"hash/fnv"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// Cache keeps the replies of successful mutating requests by
// request_id, so a client retrying after a lost reply gets the first reply
// and nothing is done twice. It is bounded in age (the window), in entries
// and in bytes; whichever bound is reached first drops the oldest replies.
// An allocation needs no entry to be safe: its ledger entry remembers the
// request that made it for as long as it lives (ledger.Allocate). Its owner
// (the device) serialises calls.
type Cache struct {
	window     time.Duration
	maxEntries int
	maxBytes   int64
	bytes      int64
	entries    map[Key]*list.Element
	order      *list.List // oldest first
}

// Key is a request_id as its tenant ("" the operator) gave it: a tenant's
// request ids are its own.
type Key struct{ Tenant, RequestID string }

type replay struct {
	key    Key
	op     subjects.Op
	digest uint64
	data   []byte // the request's payload, to compare a retry's
	reply  []byte
	at     time.Time
}

func (r *replay) size() int64 {
	return int64(len(r.key.Tenant)+len(r.key.RequestID)+len(r.data)+len(r.reply)) + replayOverhead
}

// replayOverhead is what an entry costs beyond its bytes: the element, the
// map entry, the struct.
const replayOverhead = 320

// New returns an empty cache: replies are kept for window, at most
// maxEntries of them and maxBytes in all (the oldest go first).
func New(window time.Duration, maxEntries int, maxBytes int64) *Cache {
	return &Cache{window: window, maxEntries: maxEntries, maxBytes: maxBytes, entries: map[Key]*list.Element{}, order: list.New()}
}

func digest(op subjects.Op, data []byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte(op))
	h.Write([]byte{0})
	h.Write(data)
	return h.Sum64()
}

// sameRequest reports whether a retry's payload asks for what the first
// request's did: the same bytes, or the same canonical form (keys in
// another order or spelling, other white space).
func sameRequest(first, retry []byte) bool {
	if bytes.Equal(first, retry) {
		return true
	}
	a, errA := subjects.Canonical(first)
	b, errB := subjects.Canonical(retry)
	return errA == nil && errB == nil && bytes.Equal(a, b)
}

// Lookup returns the stored reply for key. It fails with a conflict when
// the id was used for another operation or payload.
func (c *Cache) Lookup(key Key, op subjects.Op, data []byte, now time.Time) ([]byte, error) {
	c.expire(now)
	el, ok := c.entries[key]
	if !ok {
		return nil, nil
	}
	r := el.Value.(*replay)
	if r.op != op || (r.digest != digest(op, data) && !sameRequest(r.data, data)) {
		return nil, ledger.Errorf(ledger.ErrConflict, "request_id %s was already used for a different request (%s)", subjects.Quote(key.RequestID), r.op.Action())
	}
	return r.reply, nil
}

// Store keeps the reply to the request of key, op and payload data.
func (c *Cache) Store(key Key, op subjects.Op, data, reply []byte, now time.Time) {
	if el, ok := c.entries[key]; ok {
		c.remove(el)
	}
	// data is the request's own (the envelope decoder copied it), so it is
	// kept as it is.
	r := &replay{key, op, digest(op, data), data, reply, now}
	c.entries[key] = c.order.PushBack(r)
	c.bytes += r.size()
	for c.order.Len() > c.maxEntries || (c.bytes > c.maxBytes && c.order.Len() > 1) {
		c.remove(c.order.Front())
	}
}

func (c *Cache) expire(now time.Time) {
	for el := c.order.Front(); el != nil && now.Sub(el.Value.(*replay).at) > c.window; el = c.order.Front() {
		c.remove(el)
	}
}

func (c *Cache) remove(el *list.Element) {
	r := el.Value.(*replay)
	delete(c.entries, r.key)
	c.bytes -= r.size()
	c.order.Remove(el)
}
