package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
)

// testWorker builds a worker for node on a sim host of one 1 GiB device,
// with the default config changed by tweak (which may be nil).
func testWorker(t *testing.T, node string, tweak func(*Config)) (*Worker, *sim.Backend) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Node = node
	b := sim.New(sim.Default(1, 1<<30))
	cfg.Backend = b
	if tweak != nil {
		tweak(&cfg) // may wrap the backend, or replace it with another sim
	}
	if other, ok := cfg.Backend.(*sim.Backend); ok {
		b = other
	}
	w, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w, b
}

// actOn runs a request body for op on w's first device, as the handler
// would after receiving it.
func actOn(t *testing.T, w *Worker, op subjects.Op, body string) error {
	t.Helper()
	env, err := subjects.DecodeRequest([]byte(body), op)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.act(context.Background(), op, w.gpus[0], &testRequest{data: []byte(body)}, env, w.handlers[op], newReplyWriter())
	return err
}

// testRequest is a micro.Request that keeps what it was answered, so the
// shell's handlers can be driven without a server.
type testRequest struct {
	data    []byte
	headers micro.Headers
	reply   string
	mu      sync.Mutex
	bodies  [][]byte // success replies
	errs    []string // error codes of error replies
}

func (r *testRequest) Respond(b []byte, _ ...micro.RespondOpt) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bodies = append(r.bodies, bytes.Clone(b))
	return nil
}
func (r *testRequest) RespondJSON(v any, _ ...micro.RespondOpt) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.Respond(b)
}
func (r *testRequest) Error(code, description string, data []byte, _ ...micro.RespondOpt) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, description)
	return nil
}
func (r *testRequest) Data() []byte           { return r.data }
func (r *testRequest) Headers() micro.Headers { return r.headers }
func (r *testRequest) Subject() string        { return "memory.test" }
func (r *testRequest) Reply() string {
	if r.reply == "" {
		return "_INBOX.test"
	}
	return r.reply
}

// answers is what r was answered: success bodies and error descriptions.
func (r *testRequest) answers() ([][]byte, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.bodies), slices.Clone(r.errs)
}
