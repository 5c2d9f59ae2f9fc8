package worker

import (
	"context"
	"testing"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/device/sim"
)

// FuzzDispatch sends arbitrary requests for every operation to a worker on
// a small sim host: no panic, no INTERNAL_ERROR, and after every request
// the ledger still equals the pool and the pool the backend.
func FuzzDispatch(f *testing.F) {
	for i, seed := range []string{
		`{"data":{"size_bytes":1048576}}`, `{"data":{"size_bytes":3000000,"alignment":4096,"allocation_type":"PINNED"}}`,
		`{"data":{"size_bytes":1,"ttl_seconds":0.001,"export":true}}`, `{"data":{"allocation_id":"x"}}`,
		`{"data":{"force":true}}`, `{"data":{}}`, `{"data":{"strategies":["offload_idle"],"idle_seconds":1e-9}}`,
		`{"data":{"optimization_type":"offload","target_usage_percentage":0}}`, `{"data":{"window_seconds":1}}`,
		`{"request_id":"same","data":{"size_bytes":5}}`, `{"action":"memory.nope"}`, `garbage`,
	} {
		f.Add(uint8(i), []byte(seed), []byte(`{"data":{"size_bytes":2097152,"model_id":"m"}}`))
	}
	ops := subjects.Ops()
	f.Fuzz(func(t *testing.T, opIndex uint8, first, second []byte) {
		cfg := DefaultConfig()
		cfg.Node = "fuzz"
		b := sim.New(sim.Default(2, 64<<20))
		cfg.Backend = b
		w, err := New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		fns := w.ops()
		g := w.gpus[0]
		for i, body := range [][]byte{second, first, second} {
			op := ops[(int(opIndex)+i)%len(ops)]
			env, err := subjects.DecodeRequest(body, op)
			if err == nil {
				_, err = w.act(context.Background(), op, g, &testRequest{data: body}, env, fns[op], newReplyWriter())
			}
			if err != nil && wireError(err).Code == subjects.CodeInternal {
				t.Fatalf("%s %q: internal error: %v", op, body, err)
			}
			checkBooks(t, w, b)
		}
	})
}

// checkBooks compares the ledger, the pools and the sim's segments.
func checkBooks(t *testing.T, w *Worker, b *sim.Backend) {
	t.Helper()
	for _, g := range w.gpus {
		g.mu.Lock()
		err := g.Audit()
		s := g.PoolStats(device.VRAM)
		var held int64
		for _, seg := range b.Segments(g.Index(), device.VRAM) {
			held += seg.Size
		}
		g.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if held != s.ReservedBytes {
			t.Fatalf("%s: pool reserves %d, backend holds %d", g.ID(), s.ReservedBytes, held)
		}
	}
}
