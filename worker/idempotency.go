package worker

import (
	"bytes"
	"container/list"
	"hash/fnv"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// replayCache keeps the replies of successful mutating requests by
// request_id, so a client retrying after a lost reply gets the first reply
// and nothing is done twice. It is bounded in age (the window), in entries
// and in bytes; whichever bound is reached first drops the oldest replies.
// An allocation needs no entry to be safe: its ledger entry remembers the
// request that made it for as long as it lives (ledger.Origin). Its owner
// (the device) serialises calls.
type replayCache struct {
	window     time.Duration
	maxEntries int
	maxBytes   int64
	bytes      int64
	entries    map[string]*list.Element
	order      *list.List // oldest first
}

type replay struct {
	requestID string
	op        subjects.Op
	digest    uint64
	data      []byte // the request's payload, to compare a retry's
	reply     []byte
	at        time.Time
}

func (r *replay) size() int64 {
	return int64(len(r.requestID)+len(r.data)+len(r.reply)) + replayOverhead
}

// replayOverhead is what an entry costs beyond its bytes: the element, the
// map entry, the struct.
const replayOverhead = 320

func newReplayCache(window time.Duration, maxEntries int, maxBytes int64) *replayCache {
	return &replayCache{window: window, maxEntries: maxEntries, maxBytes: maxBytes, entries: map[string]*list.Element{}, order: list.New()}
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

// lookup returns the stored reply for requestID. It fails with a conflict
// when the id was used for another operation or payload.
func (c *replayCache) lookup(requestID string, op subjects.Op, data []byte, now time.Time) ([]byte, error) {
	c.expire(now)
	el, ok := c.entries[requestID]
	if !ok {
		return nil, nil
	}
	r := el.Value.(*replay)
	if r.op != op || (r.digest != digest(op, data) && !sameRequest(r.data, data)) {
		return nil, ledger.Errorf(ledger.ErrConflict, "request_id %s was already used for a different request (%s)", requestID, r.op.Action())
	}
	return r.reply, nil
}

func (c *replayCache) store(requestID string, op subjects.Op, data, reply []byte, now time.Time) {
	if el, ok := c.entries[requestID]; ok {
		c.remove(el)
	}
	// data is the request's own (the envelope decoder copied it), so it is
	// kept as it is.
	r := &replay{requestID, op, digest(op, data), data, reply, now}
	c.entries[requestID] = c.order.PushBack(r)
	c.bytes += r.size()
	for c.order.Len() > c.maxEntries || (c.bytes > c.maxBytes && c.order.Len() > 1) {
		c.remove(c.order.Front())
	}
}

func (c *replayCache) expire(now time.Time) {
	for el := c.order.Front(); el != nil && now.Sub(el.Value.(*replay).at) > c.window; el = c.order.Front() {
		c.remove(el)
	}
}

func (c *replayCache) remove(el *list.Element) {
	r := el.Value.(*replay)
	delete(c.entries, r.requestID)
	c.bytes -= r.size()
	c.order.Remove(el)
}
