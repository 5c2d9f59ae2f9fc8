package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"github.com/memworker/memworker/internal/replycache"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/replay"
)

// opFunc acts on a device for call with a request's data and returns the
// reply data. It runs with the device's lock held.
type opFunc func(ctx context.Context, g *gpu, call ledger.Call, data json.RawMessage) (any, error)

// typed turns a function of a decoded, validated payload into an opFunc:
// decode the envelope's data (its keys checked and in snake_case already:
// subjects.DecodeRequest), check the payload's device_id against the
// subject, validate, act.
func typed[Req any](fn func(ctx context.Context, g *gpu, call ledger.Call, req *Req) (any, error)) opFunc {
	return func(ctx context.Context, g *gpu, call ledger.Call, data json.RawMessage) (any, error) {
		req := new(Req)
		if len(data) > 0 && string(data) != "null" && string(data) != "{}" { // the zero payload either way
			if err := subjects.DecodeData(data, req); err != nil {
				return nil, err
			}
		}
		if t, ok := any(req).(interface{ Device() string }); ok && t.Device() != "" && t.Device() != g.ID() {
			return nil, subjects.Invalid("data.device_id %s contradicts the subject's device %s", subjects.Quote(t.Device()), subjects.Quote(g.ID()))
		}
		if v, ok := any(req).(interface{ Validate() error }); ok {
			if err := v.Validate(); err != nil {
				return nil, err
			}
		}
		return fn(ctx, g, call, req)
	}
}

// handler serves op for device g: decode the envelope, replay or act,
// respond. Every reply, error or not, has a JSON body.
func (w *Worker) handler(ctx context.Context, op subjects.Op, g *gpu, fn opFunc) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		start := time.Now()
		if !w.replyable(req) {
			return
		}
		env, err := subjects.DecodeRequest(req.Data(), op)
		requestID := ""
		if env != nil {
			requestID = env.RequestID
		}
		if err != nil {
			w.respond(req, op, g.ID(), orNewID(requestID), err, start)
			return
		}
		rw := newReplyWriter()
		defer rw.release()
		body, err := w.act(ctx, op, g, req, env, fn, rw)
		if errors.Is(err, errQueued) {
			return // it waits for room; the ledger's decision answers it
		}
		if body != nil {
			// Counted before the reply leaves: a client that reads the
			// metrics after its reply finds its request there.
			w.metrics.served(op, "", start)
			if rerr := req.Respond(body); rerr != nil {
				w.log.Warn("reply failed", "op", op, "device", g.ID(), "request_id", requestID, "err", rerr)
			}
			return
		}
		w.respond(req, op, g.ID(), orNewID(requestID), err, start)
	})
}

// replyable reports whether req may be answered, and counts (and now and
// then logs) the requests dropped: those without a reply subject (nobody
// could learn the outcome: a mutation would leak) and those whose reply
// subject is one the worker must never publish on.
func (w *Worker) replyable(req micro.Request) bool {
	reply := req.Reply()
	if replyAllowed(reply) {
		return true
	}
	reason := dropReplySubject
	if reply == "" {
		reason = dropNoReply
	}
	w.metrics.dropped.WithLabelValues(reason).Inc()
	w.drops.note(w.log, "requests dropped without a reply", "reason", reason, "subject", clipArg(req.Subject()), "reply", clipArg(reply))
	return false
}

// orNewID returns id, or a new unique one (a NUID: fast, and unique without
// coordination) for requests that came without.
func orNewID(id string) string {
	if id != "" {
		return id
	}
	return nuid.Next()
}

// act runs op for req under the device lock. It returns the encoded
// success reply, written by rw (or, for a replay, the cached reply), or
// the error; errQueued when the request waits for its reply. A read is
// encoded after the lock is let go; a mutation under it, and when it came
// with a request_id its reply is cached for a retry (and a retry is
// answered from the cache).
func (w *Worker) act(ctx context.Context, op subjects.Op, g *gpu, req micro.Request, env *subjects.Envelope, fn opFunc, rw *replyWriter) ([]byte, error) {
	requestID := orNewID(env.RequestID)
	call := ledger.Call{Who: callerOf(req)}
	traits := op.Traits()
	if traits.OperatorOnly && !call.Who.Operator() {
		return nil, ledger.Errorf(ledger.ErrForbidden, "%s acts on every tenant's memory: only the operator may ask for it", op)
	}
	g.truth.used()
	if traits.Bounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.cfg.OpTimeout)
		defer cancel()
	}
	if !traits.Mutating {
		return w.read(ctx, g, op, call, env, fn, rw, requestID)
	}
	// A tenant's request ids are its own: another tenant may use the same.
	var replayKey replay.Key
	if env.RequestID != "" {
		call.RequestID = env.RequestID
		replayKey = replay.Key{Tenant: call.Who.Tenant, RequestID: env.RequestID}
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	call.Now = time.Now()
	if call.RequestID != "" {
		body, err := g.replays.Lookup(replayKey, op, env.Data, call.Now)
		if body != nil || err != nil {
			return body, err
		}
	}
	data, err := fn(ctx, g, call, env.Data)
	var q queued
	waiting := false
	if traits.MayWait {
		q, waiting = err.(queued) // allocate returns it as it is
	}
	if waiting {
		w.park(g, q.ticket, req, pending{op: op, id: requestID, replayKey: replayKey, data: env.Data, start: call.Now})
	}
	// A failed mutation may have changed the device too (a model_optimize
	// that stopped half way), so pressure is checked either way; what it
	// freed may admit waiters.
	w.recheck(g)
	if waiting {
		return nil, errQueued
	}
	if err != nil {
		return nil, err
	}
	body, err := w.encodeReply(rw, requestID, data, tenantUsage(g, call.Who), call.Now, nil)
	if err != nil {
		return nil, err
	}
	if call.RequestID != "" {
		g.replays.Store(replayKey, op, env.Data, bytes.Clone(body), call.Now)
	}
	if w.log.Enabled(ctx, slog.LevelDebug) {
		w.log.Debug("done", "op", op, "device", g.ID(), "request_id", requestID)
	}
	return body, nil
}

// read runs a read for act: the recent reply when one holds (recent.go),
// else fn's reply. A read's data shares nothing the device's next request
// changes: it is encoded after the lock is let go.
func (w *Worker) read(ctx context.Context, g *gpu, op subjects.Op, call ledger.Call, env *subjects.Envelope, fn opFunc, rw *replyWriter, requestID string) ([]byte, error) {
	r := g.recent[op]
	g.mu.Lock()
	call.Now = time.Now()
	var pinned *subjects.PinnedPool
	if r != nil {
		pinned = w.pinnedPool() // as of the request's now, before its reply is built
		x, err := r.find(ctx, g, call, env.Data, pinned)
		if x != nil || err != nil {
			g.mu.unlockRead()
			if err != nil {
				return nil, err
			}
			return w.fits(rw.successKept(requestID, x.entry, x.tu, call.Now))
		}
	}
	data, err := fn(ctx, g, call, env.Data)
	tu := tenantUsage(g, call.Who)
	x := r.stamp(g, call, env.Data, pinned, tu)
	g.mu.unlockRead()
	if err != nil {
		return nil, err
	}
	body, err := w.encodeReply(rw, requestID, data, tu, call.Now, g.kept[op])
	if err == nil {
		r.keep(x, rw.entry)
	}
	return body, err
}

// tenantUsage is who's usage of g for its replies, nil for the operator.
// The caller holds g.mu.
func tenantUsage(g *gpu, who ledger.Who) *subjects.TenantUsage {
	if who.Operator() {
		return nil // and nothing allocated: most requests are the operator's
	}
	u, ok := g.TenantUsage(who)
	if !ok {
		return nil
	}
	return &u
}

// encodeReply encodes a success reply that the server will carry: a reply
// over its max payload would be dropped, so it becomes an error that says
// how to page instead.
func (w *Worker) encodeReply(rw *replyWriter, requestID string, data any, tu *subjects.TenantUsage, now time.Time, kept *replycache.Cache) ([]byte, error) {
	return w.fits(rw.success(requestID, data, tu, now, kept))
}

// fits passes an encoded reply on, or refuses one the server would not
// carry.
func (w *Worker) fits(body []byte, err error) ([]byte, error) {
	if err == nil && w.maxPayload > 0 && int64(len(body)) > w.maxPayload {
		return nil, subjects.Invalid("the reply would be %d bytes, over the server's max payload of %d: ask for less (a smaller limit or max_samples, then page with cursor)", len(body), w.maxPayload)
	}
	return body, err
}

// retryAfter is the data of an OVERLOADED reply: when to try again. A
// full queue drains as waits end and transfers finish: half a second.
var retryAfter = json.RawMessage(`{"retry_after_ms":500}`)

// respond sends an error reply: the JSON envelope plus micro's error headers
// (code as a number, message as description).
// It counts the request (before the reply leaves) as served at start.
func (w *Worker) respond(req micro.Request, op subjects.Op, deviceID, requestID string, err error, start time.Time) {
	we := wireError(err)
	w.metrics.served(op, we.Code, start)
	// A client's mistake is the client's to see in its reply; the log
	// speaks up only where an operator has something to do.
	level := slog.LevelDebug
	switch we.Code {
	case subjects.CodeInternal:
		level = slog.LevelError
	case subjects.CodeDeviceUnavailable:
		level = slog.LevelWarn
	}
	w.log.Log(context.Background(), level, "request failed", "op", op, "device", deviceID, "request_id", clipArg(requestID), "code", we.Code, "err", we.Message)
	r := subjects.Reply{RequestID: requestID, Timestamp: time.Now().UTC(), ErrorCode: we.Code, ErrorMessage: we.Message}
	if we.Code == subjects.CodeOverloaded {
		r.Data = retryAfter
	}
	body, _ := json.Marshal(r)
	if rerr := req.Error(strconv.Itoa(we.Code.Status()), string(we.Code)+": "+we.Message, body); rerr != nil {
		w.log.Warn("error reply failed", "op", op, "device", deviceID, "request_id", requestID, "err", rerr)
	}
}
