// Package replay keeps the replies of successful mutating requests by
// request_id, so a client retrying after a lost reply gets the first reply
// and nothing is done twice.
package replay

import (
	"bytes"
	"hash/maphash"
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
	entries    map[Key]*replay
	tenants    map[string]*share // each tenant's replies
	all        ages              // every reply, oldest first: the window ends them in order
}

// share is one tenant's replies, oldest first.
type share struct {
	ages
	bytes int64
}

// ages lists replies oldest first, through the replies themselves (no
// element to allocate per reply); link picks which of a reply's links
// the list uses.
type ages struct {
	oldest, newest *replay
	n              int
}

// links are a reply's neighbours by age in one list.
type links struct{ older, newer *replay }

func byTenant(r *replay) *links { return &r.inShare }
func byAge(r *replay) *links    { return &r.inAll }

// push appends r, the newest.
func (l *ages) push(r *replay, link func(*replay) *links) {
	*link(r) = links{older: l.newest}
	if l.newest != nil {
		link(l.newest).newer = r
	} else {
		l.oldest = r
	}
	l.newest = r
	l.n++
}

// unlink takes r out.
func (l *ages) unlink(r *replay, link func(*replay) *links) {
	at := link(r)
	if at.older != nil {
		link(at.older).newer = at.newer
	} else {
		l.oldest = at.newer
	}
	if at.newer != nil {
		link(at.newer).older = at.older
	} else {
		l.newest = at.older
	}
	*at = links{}
	l.n--
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
	share  *share
	// Its neighbours by age in its tenant's share and in the whole cache.
	inShare, inAll links
}

func (r *replay) size() int64 {
	return int64(len(r.key.Tenant)+len(r.key.RequestID)+len(r.data)+len(r.reply)) + replayOverhead
}

// replayOverhead is what an entry costs beyond its bytes: the map entry
// and the struct.
const replayOverhead = 320

// New returns an empty cache: replies are kept for window, at most
// maxEntries of them and maxBytes in all (the largest tenant's oldest go
// first).
func New(window time.Duration, maxEntries int, maxBytes int64) *Cache {
	return &Cache{window: window, maxEntries: maxEntries, maxBytes: maxBytes, entries: map[Key]*replay{}, tenants: map[string]*share{}}
}

// digest sums op and data, seeded per process: replies are compared
// within this process only, and a client cannot make two payloads with
// one digest.
func digest(op subjects.Op, data []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(digestSeed)
	h.WriteString(string(op))
	h.WriteByte(0)
	h.Write(data)
	return h.Sum64()
}

var digestSeed = maphash.MakeSeed()

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
	r, ok := c.entries[key]
	if !ok {
		return nil, nil
	}
	if r.op != op || (r.digest != digest(op, data) && !sameRequest(r.data, data)) {
		return nil, ledger.Errorf(ledger.ErrConflict, "request_id %s was already used for a different request (%s)", subjects.Quote(key.RequestID), r.op.Action())
	}
	return r.reply, nil
}

// Store keeps the reply to the request of key, op and payload data.
func (c *Cache) Store(key Key, op subjects.Op, data, reply []byte, now time.Time) {
	if r, ok := c.entries[key]; ok {
		c.remove(r)
	}
	// data is the request's own (the envelope decoder copied it), so it is
	// kept as it is.
	r := &replay{key: key, op: op, digest: digest(op, data), data: data, reply: reply, at: now}
	sh := c.tenants[key.Tenant]
	if sh == nil {
		sh = &share{}
		c.tenants[key.Tenant] = sh
	}
	r.share = sh
	sh.push(r, byTenant)
	c.all.push(r, byAge)
	c.entries[key] = r
	sh.bytes += r.size()
	c.bytes += r.size()
	for {
		byEntries := len(c.entries) > c.maxEntries
		if !byEntries && (c.bytes <= c.maxBytes || len(c.entries) <= 1) {
			return
		}
		c.remove(c.largest(byEntries).oldest)
	}
}

// largest is the tenant share with the most entries (byEntries) or bytes.
func (c *Cache) largest(byEntries bool) *share {
	var top *share
	for _, sh := range c.tenants {
		if top == nil || byEntries && sh.n > top.n || !byEntries && sh.bytes > top.bytes {
			top = sh
		}
	}
	return top
}

// expire ends the replies older than the window, in the order they were
// stored: a lookup with nothing to end looks at one reply, however many
// tenants there are. Replies are stored nearly in time order (a waiter
// granted during a request is stored, stamped a moment later, before that
// request's reply), so one may outlive the window by that moment.
func (c *Cache) expire(now time.Time) {
	for r := c.all.oldest; r != nil && now.Sub(r.at) > c.window; r = c.all.oldest {
		c.remove(r)
	}
}

func (c *Cache) remove(r *replay) {
	sh := r.share
	delete(c.entries, r.key)
	c.bytes -= r.size()
	sh.bytes -= r.size()
	sh.unlink(r, byTenant)
	c.all.unlink(r, byAge)
	if sh.n == 0 {
		delete(c.tenants, r.key.Tenant)
	}
}
