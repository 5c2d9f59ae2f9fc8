package worker

import (
	"bytes"
	"sync"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/memworker/memworker/internal/replycache"
	"github.com/memworker/memworker/subjects"
)

// A replyWriter writes success envelopes into a buffer it keeps from one
// reply to the next. The NATS client copies a reply into its own write
// buffer during Respond, so the buffer is free again once Respond returns;
// pooling writers saves, per request, the reply's two allocations and
// copies (the encoder's result, then the envelope around it).
//
// The data is encoded with goccy/go-json, which writes the same bytes as
// encoding/json (TestReplyEncodingMatchesEncodingJSON checks every reply
// type) faster. The envelope is written by hand: marshalling a struct
// holding already encoded data as a json.RawMessage would scan and compact
// those bytes again, the largest cost of a get_status when profiled
// (docs/performance.md).
type replyWriter struct {
	buf bytes.Buffer
	enc *gojson.Encoder
	fp  replycache.Scratch
	now [64]byte // the reply's timestamp, written
	// entry is the kept encoding the last success wrote its data from, or
	// kept; nil when none (what the read's recent reply refers to).
	entry *replycache.Entry
}

// maxPooledReply bounds the buffers kept for reuse: a rare large reply
// (analytics, a long listing) is not held on to.
const maxPooledReply = 64 << 10

var replyWriters = sync.Pool{New: func() any {
	rw := new(replyWriter)
	rw.enc = gojson.NewEncoder(&rw.buf)
	return rw
}}

// newReplyWriter takes a writer from the pool; release gives it back.
func newReplyWriter() *replyWriter { return replyWriters.Get().(*replyWriter) }

// release returns rw to the pool. What success returned is invalid after.
func (rw *replyWriter) release() {
	if rw.buf.Cap() > maxPooledReply {
		return
	}
	rw.buf.Reset()
	rw.entry = nil
	replyWriters.Put(rw)
}

// success writes the success envelope around data (and the tenant's usage,
// when not nil), data from kept's encoding when it holds one of the same
// value (kept may be nil). The bytes are valid until the next success or
// release.
func (rw *replyWriter) success(requestID string, data any, tu *subjects.TenantUsage, now time.Time, kept *replycache.Cache) ([]byte, error) {
	rw.entry = nil
	return rw.envelope(requestID, tu, now, func(now time.Time, nowText []byte) error {
		return rw.data(data, now, nowText, kept)
	})
}

// successKept is success with data already encoded, as e keeps it.
func (rw *replyWriter) successKept(requestID string, e *replycache.Entry, tu *subjects.TenantUsage, now time.Time) ([]byte, error) {
	return rw.envelope(requestID, tu, now, func(_ time.Time, nowText []byte) error {
		e.WriteTo(&rw.buf, nowText)
		return nil
	})
}

// envelope writes the success envelope, data written by data with now in
// UTC and its text.
func (rw *replyWriter) envelope(requestID string, tu *subjects.TenantUsage, now time.Time, data func(now time.Time, nowText []byte) error) ([]byte, error) {
	rw.buf.Reset()
	rw.buf.WriteString(`{"success":true,"request_id":`)
	if err := rw.str(requestID); err != nil {
		return nil, err
	}
	rw.buf.WriteString(`,"timestamp":"`)
	now = now.UTC()
	nowText := now.AppendFormat(rw.now[:0], time.RFC3339Nano)
	rw.buf.Write(nowText)
	rw.buf.WriteString(`","data":`)
	if err := data(now, nowText); err != nil {
		return nil, err
	}
	if tu != nil {
		rw.buf.WriteString(`,"tenant_usage":`)
		if err := rw.value(tu); err != nil {
			return nil, err
		}
	}
	rw.buf.WriteByte('}')
	return rw.buf.Bytes(), nil
}

// keptReplies are the reads whose encoding each device keeps while the
// reply's value stays the same: those that monitoring polls, many times
// between two readings of the driver.
var keptReplies = []subjects.Op{subjects.GetStatus, subjects.GetUsage, subjects.GetPressure}

func keptCaches() map[subjects.Op]*replycache.Cache {
	m := make(map[subjects.Op]*replycache.Cache, len(keptReplies))
	for _, op := range keptReplies {
		m[op] = new(replycache.Cache)
	}
	return m
}

// maxKept bounds a kept encoding (a status listing its allocations).
const maxKept = 64 << 10

// data appends v as JSON: kept's encoding when it has one of v's value
// with now (UTC) as its time (now is the request's: the reply's usage is
// read at it; nowText is its text), else v encoded, which kept then keeps.
func (rw *replyWriter) data(v any, now time.Time, nowText []byte, kept *replycache.Cache) error {
	if kept == nil {
		return rw.value(v)
	}
	k, ok := replycache.Fingerprint(&rw.fp, v, now, nowText)
	if !ok {
		return rw.value(v)
	}
	if rw.entry = kept.WriteTo(&rw.buf, k); rw.entry != nil {
		return nil
	}
	start := rw.buf.Len()
	if err := rw.value(v); err != nil {
		return err
	}
	if rw.buf.Len()-start <= maxKept {
		rw.entry = kept.Store(k, rw.buf.Bytes()[start:])
	}
	return nil
}

// str appends s as a JSON string. Ids (NUIDs, UUIDs, most clients' own)
// need no escaping and are written as they are; anything else goes
// through the encoder.
func (rw *replyWriter) str(s string) error {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return rw.value(s)
		}
	}
	rw.buf.WriteByte('"')
	rw.buf.WriteString(s)
	rw.buf.WriteByte('"')
	return nil
}

// value appends v as JSON. The encoder writes nothing when it fails.
func (rw *replyWriter) value(v any) error {
	if err := rw.enc.Encode(v); err != nil {
		return err
	}
	rw.buf.Truncate(rw.buf.Len() - 1) // Encode ends the value with a newline
	return nil
}
