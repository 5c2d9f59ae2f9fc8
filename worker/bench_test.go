package worker

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nuid"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
)

func benchWorker(b *testing.B) *Worker {
	cfg := DefaultConfig()
	cfg.Node = "bench"
	cfg.Backend = sim.New(sim.Default(1, 16<<30))
	w, err := New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// BenchmarkAct measures an operation in process: decode, lock, act, encode,
// without NATS.
func BenchmarkAct(b *testing.B) {
	for _, tc := range []struct {
		op   subjects.Op
		body string
	}{
		{subjects.GetStatus, `{"request_id":"r","data":{}}`},
		{subjects.GetUsage, `{"request_id":"r","data":{}}`},
		{subjects.GetPressure, `{}`},
	} {
		b.Run(string(tc.op), func(b *testing.B) {
			w := benchWorker(b)
			benchOp(b, w, w.gpus[0], tc.op, tc.body)
		})
	}
	for _, live := range []int{0, 10_000} {
		b.Run(fmt.Sprintf("allocate+deallocate/%d-live", live), func(b *testing.B) {
			benchAllocFree(b, live)
		})
	}
}

// benchAllocFree measures an allocate and a deallocate on a device already
// holding live allocations.
func benchAllocFree(b *testing.B, live int) {
	{
		w := benchWorker(b)
		g := w.gpus[0]
		ops := w.ops()
		ctx := context.Background()
		rw := newReplyWriter()
		req := &testRequest{}
		for i := 0; i < live; i++ {
			g.mu.Lock()
			_, err := ops[subjects.Allocate](ctx, g, ledger.Call{Now: time.Now()}, []byte(`{"size_bytes":4096,"purpose":"p"}`))
			g.mu.Unlock()
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		for b.Loop() {
			env, _ := subjects.DecodeRequest([]byte(`{"data":{"size_bytes":1048576}}`), subjects.Allocate)
			g.mu.Lock()
			data, err := ops[subjects.Allocate](ctx, g, ledger.Call{Now: time.Now()}, env.Data)
			g.mu.Unlock()
			if err != nil {
				b.Fatal(err)
			}
			id := data.(subjects.Allocation).AllocationID
			env, _ = subjects.DecodeRequest([]byte(`{"data":{"allocation_id":"`+id+`"}}`), subjects.Deallocate)
			if _, err := w.act(ctx, subjects.Deallocate, g, req, env, ops[subjects.Deallocate], rw); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkReply measures writing a success envelope alone: a status as
// get_status builds it on an idle device, and an allocation.
func BenchmarkReply(b *testing.B) {
	w := benchWorker(b)
	g := w.gpus[0]
	g.mu.Lock()
	status, err := w.getStatus(context.Background(), g, ledger.Call{Now: time.Now()}, &subjects.StatusRequest{})
	var allocation any
	if err == nil {
		allocation, err = w.ops()[subjects.Allocate](context.Background(), g, ledger.Call{Now: time.Now()}, []byte(`{"size_bytes":4096,"purpose":"kv_cache","model_id":"m"}`))
	}
	g.mu.Unlock()
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data any
	}{{"status", status}, {"allocation", allocation}} {
		b.Run(tc.name, func(b *testing.B) {
			rw := newReplyWriter()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rw.success("qjtOZFgblPmHINXvIPDGTn", tc.data, nil, time.Now(), nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkScale measures get_status (plain, and with its allocation list)
// and one page of get_allocations on a device holding 100 and then a
// million live allocations (full pages either way): their cost must not
// grow with the ledger.
func BenchmarkScale(b *testing.B) {
	w := benchWorker(b)
	g := w.gpus[0]
	ctx := context.Background()
	ops := w.ops()
	fill := func(n int) {
		for g.Len() < n {
			g.mu.Lock()
			_, err := ops[subjects.Allocate](ctx, g, ledger.Call{Now: time.Now()}, []byte(`{"size_bytes":4096,"purpose":"kv_cache","model_id":"m"}`))
			g.mu.Unlock()
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, live := range []int{100, 1_000_000} {
		fill(live)
		for _, tc := range []struct {
			op   subjects.Op
			body string
		}{
			{subjects.GetStatus, `{"data":{}}`},
			{subjects.GetStatus, `{"data":{"include_allocations":true}}`},
			{subjects.GetAllocations, `{"data":{"limit":100}}`},
			{subjects.GetAllocations, `{"data":{"limit":100,"purpose":"kv_cache"}}`},
		} {
			b.Run(fmt.Sprintf("%s%s/%d-live", tc.op, tc.body[8:len(tc.body)-1], live), func(b *testing.B) {
				benchOp(b, w, g, tc.op, tc.body)
			})
		}
	}
}

// benchOp measures decoding body and acting op with it on g.
func benchOp(b *testing.B, w *Worker, g *gpu, op subjects.Op, body string) {
	fn := w.ops()[op]
	ctx := context.Background()
	rw := newReplyWriter()
	req := &testRequest{} // micro's request is the server's, not the worker's cost
	b.ReportAllocs()
	for b.Loop() {
		env, err := subjects.DecodeRequest([]byte(body), op)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.act(ctx, op, g, req, env, fn, rw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkActCold measures get_status as a worker serving one client at a
// time meets it: each request's caches cold, other processes (the server,
// the client, the kernel's network path) having run in between. The worker
// measured 6-15 µs a request in its own handler there (scripts/processes.sh
// STATS=1, docs/performance.md) against BenchmarkAct's 1.7 µs. Each request
// comes after 4 MiB of other writes; handler-ns/op is the request's own
// time, the eviction not counted.
func BenchmarkActCold(b *testing.B) {
	w := benchWorker(b)
	g := w.gpus[0]
	op := subjects.GetStatus
	fn := w.ops()[op]
	ctx := context.Background()
	rw := newReplyWriter()
	req := &testRequest{}
	other := make([]byte, 4<<20)
	var spent time.Duration
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		for i := 0; i < len(other); i += 64 {
			other[i]++
		}
		start := time.Now()
		env, err := subjects.DecodeRequest([]byte(`{"request_id":"r","data":{}}`), op)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.act(ctx, op, g, req, env, fn, rw); err != nil {
			b.Fatal(err)
		}
		spent += time.Since(start)
		n++
	}
	b.ReportMetric(float64(spent.Nanoseconds())/float64(n), "handler-ns/op")
}

// BenchmarkHandler measures the whole handler the worker registers with
// micro, with the bodies the client sends (subjects.NewRequest: a fresh
// request_id on every mutation, so each allocate's reply is kept for a
// retry): get_status, and an allocate and a deallocate, the pair membench
// compares with an echo.
func BenchmarkHandler(b *testing.B) {
	ctx := context.Background()
	b.Run("get_status", func(b *testing.B) {
		w := benchWorker(b)
		g := w.gpus[0]
		h := w.handler(ctx, subjects.GetStatus, g, w.ops()[subjects.GetStatus])
		body, _ := subjects.NewRequest("", subjects.GetStatus, nil)
		req := &testRequest{data: body, reply: "_INBOX.x"}
		b.ReportAllocs()
		for b.Loop() {
			req.bodies = req.bodies[:0]
			h.Handle(req)
			if len(req.bodies) != 1 {
				b.Fatalf("replies %d, errors %v", len(req.bodies), req.errs)
			}
		}
	})
	b.Run("allocate+deallocate", func(b *testing.B) {
		w := benchWorker(b)
		g := w.gpus[0]
		alloc := w.handler(ctx, subjects.Allocate, g, w.ops()[subjects.Allocate])
		free := w.handler(ctx, subjects.Deallocate, g, w.ops()[subjects.Deallocate])
		req := &testRequest{reply: "_INBOX.x"}
		b.ReportAllocs()
		for b.Loop() {
			req.data, _ = subjects.NewRequest(nuid.Next(), subjects.Allocate, subjects.AllocateRequest{SizeBytes: 1 << 20})
			req.bodies = req.bodies[:0]
			alloc.Handle(req)
			if len(req.bodies) != 1 {
				b.Fatalf("replies %d, errors %v", len(req.bodies), req.errs)
			}
			_, id, _ := bytes.Cut(req.bodies[0], []byte(`"allocation_id":"`))
			id, _, _ = bytes.Cut(id, []byte(`"`))
			req.data, _ = subjects.NewRequest(nuid.Next(), subjects.Deallocate, subjects.DeallocateRequest{AllocationID: string(id)})
			free.Handle(req)
			if len(req.bodies) != 2 {
				b.Fatalf("replies %d, errors %v", len(req.bodies), req.errs)
			}
		}
	})
}
