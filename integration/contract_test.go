package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/contract"
	"github.com/memworker/memworker/subjects"
)

// Every server a test starts has an observer: a connection subscribed to
// the memory subjects and the reply inboxes, which validates every reply
// to a memory request and every event against the schema of its message
// in docs/asyncapi.yaml. A message that does not match fails the test, so
// the document cannot drift from what the worker sends. Servers that need
// credentials are observed as the worker's user (observe's options).

var validator = sync.OnceValues(func() (*contract.Validator, error) {
	return contract.LoadValidator("../" + contract.Path)
})

type observer struct {
	v       *contract.Validator
	nc      *nats.Conn
	closed  chan struct{}
	msgs    chan *nats.Msg // every subscription's, in the order they came; nil ends
	seen    chan struct{}  // closed once msgs is read to its end
	mu      sync.Mutex
	pending map[string]pendingRequest // by reply subject
	errs    []string
	checked int
}

type pendingRequest struct {
	op    subjects.Op
	fleet bool
}

// observe attaches an observer to srv; it reports what did not validate
// when the test ends. Servers that need credentials are observed through
// the connection options given; inboxes adds the reply subjects of
// clients with their own inbox prefix (_INBOX_operator.>).
func observe(t testing.TB, srv *server.Server, inboxes []string, opts ...nats.Option) {
	t.Helper()
	o, err := newObserver(srv, inboxes, opts...)
	if err != nil {
		t.Fatalf("observer: %v", err)
	}
	t.Cleanup(func() {
		errs := o.stop()
		for _, e := range errs {
			t.Errorf("the contract (%s): %s", contract.Path, e)
		}
		t.Logf("the contract: %d replies and events checked against %s, %d did not match", o.checked, contract.Path, len(errs))
	})
}

func newObserver(srv *server.Server, inboxes []string, opts ...nats.Option) (*observer, error) {
	v, err := validator()
	if err != nil {
		return nil, err
	}
	o := &observer{v: v, closed: make(chan struct{}), msgs: make(chan *nats.Msg, 1<<17), seen: make(chan struct{}), pending: map[string]pendingRequest{}}
	opts = append(opts, nats.ClosedHandler(func(*nats.Conn) { close(o.closed) }), nats.Name("contract observer"))
	if o.nc, err = nats.Connect(srv.ClientURL(), opts...); err != nil {
		return nil, err
	}
	// memory.> for the requests (to know a reply's op) and the events,
	// _INBOX.> for the replies, _R_.> for the replies to requests that came
	// through a service import (a tenant's). Not ">": the observer would
	// count as a responder to the micro service's own $SRV requests.
	// One channel for every subscription, read by one goroutine: a reply
	// is seen after its request (subscriptions with handlers each have a
	// goroutine, and a reply could overtake its request).
	for _, subject := range append([]string{subjects.Root + ".>", nats.InboxPrefix + ">", "_R_.>"}, inboxes...) {
		if _, err := o.nc.ChanSubscribe(subject, o.msgs); err != nil {
			return nil, err
		}
	}
	go func() {
		defer close(o.seen)
		for m := range o.msgs {
			if m == nil {
				return
			}
			o.see(m)
		}
	}()
	return o, o.nc.Flush()
}

// stop waits for every message sent so far to be checked and returns the
// failures.
func (o *observer) stop() []string {
	if err := o.nc.Drain(); err == nil {
		select {
		case <-o.closed:
		case <-time.After(10 * time.Second):
		}
	}
	o.nc.Close()
	o.msgs <- nil // after everything delivered before it
	<-o.seen
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.errs
}

func (o *observer) see(m *nats.Msg) {
	o.mu.Lock()
	defer o.mu.Unlock()
	// The worker never replies on memory.> (such reply subjects are
	// dropped), so only inboxes are awaited.
	if req, ok := o.pending[m.Subject]; ok && !strings.HasPrefix(m.Subject, subjects.Root+".") {
		if !req.fleet {
			delete(o.pending, m.Subject)
		}
		o.check(m, o.replySchema(req, m.Data))
		return
	}
	tokens := strings.Split(m.Subject, ".")
	if len(tokens) != 3 || tokens[0] != subjects.Root {
		return
	}
	switch tokens[1] {
	case "pressure", "allocation", "lifecycle":
		o.check(m, eventSchema(m))
	default:
		if op, ok := subjects.ParseAction(tokens[1]); ok && m.Reply != "" && !strings.HasPrefix(m.Reply, subjects.Root+".") {
			o.pending[m.Reply] = pendingRequest{op: op, fleet: tokens[2] == subjects.Fleet}
		}
	}
}

// replySchema is the schema a reply to req must match: a failure is an
// ErrorReply, a fleet answer the op's fleet reply, else its envelope.
func (o *observer) replySchema(req pendingRequest, body []byte) string {
	var head struct {
		Success *bool `json:"success"`
	}
	_ = json.Unmarshal(body, &head)
	switch {
	case head.Success != nil && !*head.Success:
		return contract.ErrorReply
	case req.fleet:
		return req.op.FleetReplySchema()
	}
	return req.op.ReplySchema()
}

// eventSchema is the schema of an event: the structured CloudEvent of its
// type, or in binary mode (ce- headers) its data's.
func eventSchema(m *nats.Msg) string {
	if t := m.Header.Get("ce-type"); t != "" {
		return contract.EventDataSchema(t)
	}
	var head struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(m.Data, &head)
	return contract.EventName(head.Type)
}

func (o *observer) check(m *nats.Msg, schema string) {
	o.checked++
	if err := o.v.Validate(schema, m.Data); err != nil {
		o.errs = append(o.errs, fmt.Sprintf("%s on %s: %v\n%s", schema, m.Subject, err, clip(m.Data)))
	}
}

// schemaExists reports whether the contract has a component schema name.
func schemaExists(t *testing.T, name string) bool {
	t.Helper()
	v, err := validator()
	if err != nil {
		t.Fatal(err)
	}
	return v.Has(name)
}

func clip(b []byte) string {
	if len(b) > 400 {
		return string(b[:400]) + "..."
	}
	return string(b)
}

// startUnobservedServer starts a server without the observer, for tests
// that need no subscriber but the worker on memory subjects (the observer
// would be a responder where they expect none).
func startUnobservedServer(t testing.TB) *server.Server {
	t.Helper()
	return serve(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, ServerName: unobserved})
}

// unobserved names the servers serve leaves unobserved.
const unobserved = "unobserved"

// TestTheObserverCatchesADriftedReply: a reply that does not match its
// schema is reported, one that does is not.
func TestTheObserverCatchesADriftedReply(t *testing.T) {
	srv := startUnobservedServer(t)
	o, err := newObserver(srv, nil)
	if err != nil {
		t.Fatal(err)
	}
	nc := connect(t, srv)
	sub, _ := nc.SubscribeSync("memory.get_pressure.x-gpu0")
	for _, reply := range []string{
		`{"success":true,"request_id":"","timestamp":"2026-11-26T00:00:00Z","data":{"device_id":"x-gpu0","level":"calm"}}`,
		`{"success":false,"request_id":"","timestamp":"2026-11-26T00:00:00Z","error_code":"NO_SUCH_CODE","error_message":"x"}`,
		`{"success":false,"request_id":"","timestamp":"2026-11-26T00:00:00Z","error_code":"DEVICE_NOT_FOUND","error_message":"no device x-gpu0"}`,
	} {
		inbox := nc.NewRespInbox()
		if err := nc.PublishRequest("memory.get_pressure.x-gpu0", inbox, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(time.Second); err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(inbox, []byte(reply)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Publish("memory.pressure.x-gpu0", []byte(`{"specversion":"1.0","type":"io.memworker.memory.pressure.v1"}`)); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	time.Sleep(50 * time.Millisecond) // the observer's own connection delivers after the server does
	errs := o.stop()
	if len(errs) != 3 || !strings.Contains(errs[0], "GetPressureReplyEnvelope") || !strings.Contains(errs[1], "ErrorReply") || !strings.Contains(errs[2], "PressureEvent") {
		t.Errorf("want the two drifted replies and the bare event reported, got %d:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}
