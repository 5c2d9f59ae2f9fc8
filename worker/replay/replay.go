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
// and in bytes. When a bound is reached, the tenant holding the most
// (entries or bytes, as the bound) gives up its oldest reply: a tenant
// flooding the cache with request ids evicts its own replies, not
// another's. An allocation needs no entry to be safe: its ledger entry
// remembers the request that made it for as long as it lives
// (ledger.Allocate). Its owner (the device) serialises calls.
type Cache struct {
	window     time.Duration
	maxEntries int
	maxBytes   int64
	bytes      int64
	entries    map[Key]*list.Element
	tenants    map[string]*share // each tenant's replies
}

// share is one tenant's replies, oldest first.
type share struct {
	order *list.List
	bytes int64
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
// maxEntries of them and maxBytes in all (the largest tenant's oldest go
// first).
func New(window time.Duration, maxEntries int, maxBytes int64) *Cache {
	return &Cache{window: window, maxEntries: maxEntries, maxBytes: maxBytes, entries: map[Key]*list.Element{}, tenants: map[string]*share{}}
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
	sh := c.tenants[key.Tenant]
	if sh == nil {
		sh = &share{order: list.New()}
		c.tenants[key.Tenant] = sh
	}
	c.entries[key] = sh.order.PushBack(r)
	sh.bytes += r.size()
	c.bytes += r.size()
	for {
		byEntries := len(c.entries) > c.maxEntries
		if !byEntries && (c.bytes <= c.maxBytes || len(c.entries) <= 1) {
			return
		}
		c.remove(c.largest(byEntries).order.Front())
	}
}

// largest is the tenant share with the most entries (byEntries) or bytes.
func (c *Cache) largest(byEntries bool) *share {
	var top *share
	for _, sh := range c.tenants {
		if top == nil || byEntries && sh.order.Len() > top.order.Len() || !byEntries && sh.bytes > top.bytes {
			top = sh
		}
	}
	return top
}

func (c *Cache) expire(now time.Time) {
	for _, sh := range c.tenants {
		for el := sh.order.Front(); el != nil && now.Sub(el.Value.(*replay).at) > c.window; el = sh.order.Front() {
			c.remove(el)
		}
	}
}

func (c *Cache) remove(el *list.Element) {
	r := el.Value.(*replay)
	sh := c.tenants[r.key.Tenant]
	delete(c.entries, r.key)
	c.bytes -= r.size()
	sh.bytes -= r.size()
	sh.order.Remove(el)
	if sh.order.Len() == 0 {
		delete(c.tenants, r.key.Tenant)
	}
}
