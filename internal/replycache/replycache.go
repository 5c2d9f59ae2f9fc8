// Package replycache keeps the encoding of a read's reply for as long as
// what the reply says stays the same. A device polled thousands of times a
// second answers get_status with the same figures between two readings of
// the driver, only the moment of the request differs; encoding the reply
// was the largest part of the worker's own cost per request
// (docs/performance.md). A fingerprint of the value (every bit its encoding
// could depend on, taken without allocating) decides whether the last
// encoding still holds; times equal to the request's now are parameters,
// written afresh into the kept encoding.
package replycache

import (
	"bytes"
	"reflect"
	"sync/atomic"
	"time"
	"unsafe"
)

// A Cache keeps the last few encodings stored: pollers that differ (the
// operator and tenants see different figures, requests differ in what
// they include) each find theirs. It is safe for concurrent use; a
// device's read handlers share one per operation.
type Cache struct {
	kept [keep]atomic.Pointer[Entry]
	next atomic.Uint32 // the slot the next Store takes, round robin
}

// keep is how many encodings a Cache keeps.
const keep = 4

// An Entry is a stored encoding. It is never changed once stored, so its
// holder may write it after the cache has let go of it.
type Entry struct {
	typ reflect.Type
	fp  []byte
	// segs is the encoding split where now's text stood.
	segs [][]byte
}

// A Key is a value's fingerprint at a moment: what WriteTo and Store take.
type Key struct {
	typ  reflect.Type
	fp   []byte
	nows int
	now  []byte // now's text
}

// Scratch is a fingerprint's storage, kept by its user from one call to
// the next. A key is valid until its scratch is used again.
type Scratch struct{ w walk }

// Fingerprint returns the key of v, a pointer to a reply's value, with
// times equal to now as parameters, in s's storage. nowText is now as its
// encoding writes it (time.RFC3339Nano), which the caller has at hand for
// its envelope; the key refers to it. ok is false for a value that is not
// a pointer, or whose type cannot be fingerprinted (maps, interfaces, types
// that encode themselves): such a value is encoded every time.
func Fingerprint(s *Scratch, v any, now time.Time, nowText []byte) (k Key, ok bool) {
	t := reflect.TypeOf(v)
	if t == nil || t.Kind() != reflect.Pointer {
		return Key{}, false
	}
	a, err := appenderOf(t.Elem())
	if err != nil {
		return Key{}, false
	}
	p := (*[2]unsafe.Pointer)(unsafe.Pointer(&v))[1] // a pointer is the interface's data word
	if p == nil {
		return Key{}, false
	}
	w := &s.w
	*w = walk{fp: w.fp[:0], sec: now.Unix(), nsec: now.Nanosecond(), loc: now.Location()}
	a(w, p)
	return Key{typ: t, fp: w.fp, nows: w.nows, now: nowText}, true
}

// Bytes returns the fingerprint.
func (k Key) Bytes() []byte { return k.fp }

// WriteTo writes the kept encoding of k's value into b, with k's now, and
// returns it; nil when there is none (b is left as it was).
func (c *Cache) WriteTo(b *bytes.Buffer, k Key) *Entry {
	for i := range c.kept {
		if e := c.kept[i].Load(); e != nil && e.typ == k.typ && bytes.Equal(e.fp, k.fp) {
			e.WriteTo(b, k.now)
			return e
		}
	}
	return nil
}

// Nows is how many times the encoding holds the request's now.
func (e *Entry) Nows() int { return len(e.segs) - 1 }

// WriteTo writes the encoding into b with nowText (a time as
// time.RFC3339Nano writes it) where the request's now stood.
func (e *Entry) WriteTo(b *bytes.Buffer, nowText []byte) {
	for i, s := range e.segs {
		if i > 0 {
			b.WriteByte('"')
			b.Write(nowText)
			b.WriteByte('"')
		}
		b.Write(s)
	}
}

// Store keeps encoded, the encoding of k's value, for the next requests
// with the same key, and returns what it kept. An encoding in which now's
// text does not stand exactly where k's times equal to now are is not kept
// (nil).
func (c *Cache) Store(k Key, encoded []byte) *Entry {
	var segs [][]byte
	if k.nows == 0 {
		segs = [][]byte{bytes.Clone(encoded)}
	} else {
		quoted := append(append(append(make([]byte, 0, len(k.now)+2), '"'), k.now...), '"')
		segs = bytes.Split(bytes.Clone(encoded), quoted)
		if len(segs) != k.nows+1 {
			return nil
		}
	}
	e := &Entry{typ: k.typ, fp: bytes.Clone(k.fp), segs: segs}
	c.kept[c.next.Add(1)%keep].Store(e)
	return e
}
