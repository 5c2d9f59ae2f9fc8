package worker

import (
	"container/list"
	"hash/fnv"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// replayCache keeps the replies of successful mutating requests by
// request_id, so a client retrying after a lost reply gets the first reply
// and nothing is done twice. It is bounded in entries and age. Its owner
// (the device) serialises calls.
type replayCache struct {
	window  time.Duration
	max     int
	entries map[string]*list.Element
	order   *list.List // oldest first
}

type replay struct {
	requestID string
	op        subjects.Op
	digest    uint64
	reply     []byte
	at        time.Time
}

func newReplayCache(window time.Duration, max int) *replayCache {
	return &replayCache{window: window, max: max, entries: map[string]*list.Element{}, order: list.New()}
}

func digest(op subjects.Op, data []byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte(op))
	h.Write([]byte{0})
	h.Write(data)
	return h.Sum64()
}

// lookup returns the stored reply for requestID. It fails with ErrConflict
// when the id was used for another operation or payload.
func (c *replayCache) lookup(requestID string, op subjects.Op, data []byte, now time.Time) ([]byte, error) {
	c.expire(now)
	el, ok := c.entries[requestID]
	if !ok {
		return nil, nil
	}
	r := el.Value.(*replay)
	if r.op != op || r.digest != digest(op, data) {
		return nil, ledger.Errorf(ledger.ErrConflict, "request_id %s was already used for a different request (%s)", requestID, r.op.Action())
	}
	return r.reply, nil
}

func (c *replayCache) store(requestID string, op subjects.Op, data, reply []byte, now time.Time) {
	if el, ok := c.entries[requestID]; ok {
		c.order.Remove(el)
	}
	c.entries[requestID] = c.order.PushBack(&replay{requestID, op, digest(op, data), reply, now})
	for c.order.Len() > c.max {
		c.remove(c.order.Front())
	}
}

func (c *replayCache) expire(now time.Time) {
	for el := c.order.Front(); el != nil && now.Sub(el.Value.(*replay).at) > c.window; el = c.order.Front() {
		c.remove(el)
	}
}

func (c *replayCache) remove(el *list.Element) {
	delete(c.entries, el.Value.(*replay).requestID)
	c.order.Remove(el)
}
