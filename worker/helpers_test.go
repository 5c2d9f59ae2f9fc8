package worker

import (
	"context"
	"testing"

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
	_, err = w.act(context.Background(), op, w.gpus[0], env, w.ops()[op], newReplyWriter())
	return err
}
