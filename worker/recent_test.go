package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device/sim"
	"github.com/memworker/memworker/worker/ledger"
)

// TestARecentReplyShowsEveryChange: a recent reply is sent again only while
// a reply built anew would say the same. For each kept read, as the
// operator and as a tenant, and each path by which what it says changes,
// the read is polled until its recent reply is in force, the change is
// made, and the next reply must be the one built anew: the recent reply
// must no longer hold. Readings are kept an hour, so only the change can
// end the recent reply; the driver's own figures (another process) show
// once their reading is due, as before.
func TestARecentReplyShowsEveryChange(t *testing.T) {
	reads := []struct {
		op   subjects.Op
		body string
	}{
		{subjects.GetStatus, `{}`},
		{subjects.GetStatus, `{"data":{"include_allocations":true,"include_fragmentation":true}}`},
		{subjects.GetUsage, `{}`},
		{subjects.GetPressure, `{}`},
	}
	changes := []struct {
		name string
		// due: the change shows once readings are due again, not at once.
		due bool
		// notIn are the reads whose replies do not show the change.
		notIn  map[subjects.Op]bool
		change func(t *testing.T, w *Worker, b *sim.Backend)
	}{
		{name: "the operator allocates", change: func(t *testing.T, w *Worker, _ *sim.Backend) {
			call(t, w, "", subjects.Allocate, `{"data":{"size_bytes":4194304,"purpose":"kv"}}`)
		}},
		{name: "a tenant allocates", change: func(t *testing.T, w *Worker, _ *sim.Backend) {
			call(t, w, "t", subjects.Allocate, `{"data":{"size_bytes":4194304,"purpose":"t-kv"}}`)
		}},
		{name: "a deallocation", change: func(t *testing.T, w *Worker, _ *sim.Backend) {
			call(t, w, "t", subjects.Deallocate, `{"data":{"allocation_id":"`+allocationID(t, w)+`"}}`)
		}},
		{name: "a lease expires", change: func(t *testing.T, w *Worker, _ *sim.Backend) {
			w.expire(w.gpus[0], time.Now().Add(2*time.Hour))
		}},
		{name: "an allocate waits for room", change: func(t *testing.T, w *Worker, _ *sim.Backend) {
			env, err := subjects.DecodeRequest([]byte(`{"data":{"size_bytes":1073217536,"wait_seconds":60,"ttl_seconds":60}}`), subjects.Allocate)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.act(context.Background(), subjects.Allocate, w.gpus[0], &testRequest{}, env, w.handlers[subjects.Allocate], newReplyWriter()); err != errQueued {
				t.Fatalf("allocate over the device: %v, want it queued", err)
			}
		}},
		{name: "the device is sampled", change: func(t *testing.T, w *Worker, b *sim.Backend) {
			b.SetExternalUsage(0, 64<<20)
			w.sample(w.gpus[0], time.Now().Add(2*time.Hour)) // a reading due, then
		}},
		{name: "the pinned pool grows", notIn: map[subjects.Op]bool{subjects.GetPressure: true}, change: func(t *testing.T, w *Worker, _ *sim.Backend) {
			if err := w.pinned.Ahead(context.Background(), 4<<20); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "another process takes memory", due: true, change: func(t *testing.T, w *Worker, b *sim.Backend) {
			b.SetExternalUsage(0, 64<<20)
		}},
		{name: "a process shows in telemetry", due: true, change: func(t *testing.T, w *Worker, b *sim.Backend) {
			b.SetProcess(0, 4242, 32<<20)
		}},
	}
	for _, ch := range changes {
		for _, rd := range reads {
			for _, tenant := range []string{"", "t"} {
				w, b := testWorker(t, "n", func(c *Config) {
					c.TruthMaxAge, c.TelemetryMaxAge = time.Hour, time.Hour
					if ch.due {
						c.TruthMaxAge, c.TelemetryMaxAge = 20*time.Millisecond, 20*time.Millisecond
					}
				})
				name := ch.name + ", " + string(rd.op) + " " + rd.body + ", as " + map[string]string{"": "the operator", "t": "tenant t"}[tenant]
				call(t, w, "t", subjects.Allocate, `{"data":{"size_bytes":1048576,"purpose":"t-old","ttl_seconds":3600}}`)
				before := pollUntilRecent(t, w, tenant, rd.op, rd.body)
				if got, fresh := call(t, w, tenant, rd.op, rd.body), built(t, w, tenant, rd.op, rd.body); !sameReply(got, fresh) {
					t.Fatalf("%s: the recent reply is not the one built anew:\n%s", name, cmp.Diff(normal(t, fresh), normal(t, got)))
				}
				ch.change(t, w, b)
				if ch.due {
					time.Sleep(30 * time.Millisecond)
				}
				if recentHolds(w, tenant, rd.op, rd.body) {
					t.Errorf("%s: the recent reply still holds", name)
				}
				got := call(t, w, tenant, rd.op, rd.body)
				if fresh := built(t, w, tenant, rd.op, rd.body); !sameReply(got, fresh) {
					t.Errorf("%s: the reply after the change is not the one built anew (-built +sent):\n%s", name, cmp.Diff(normal(t, fresh), normal(t, got)))
				}
				if sameReply(before, got) && !ch.notIn[rd.op] {
					t.Errorf("%s: the change does not show", name)
				}
			}
		}
	}
}

// call runs body for op on w's first device as tenant ("" the operator)
// and returns the reply's body.
func call(t *testing.T, w *Worker, tenant string, op subjects.Op, body string) []byte {
	t.Helper()
	req := &testRequest{data: []byte(body)}
	if tenant != "" {
		req.reply = "_R_.x"
		req.headers = micro.Headers{requestInfoHeader: {`{"acc":"` + tenant + `"}`}}
	}
	env, err := subjects.DecodeRequest(req.data, op)
	if err != nil {
		t.Fatal(err)
	}
	rw := newReplyWriter()
	defer rw.release()
	got, err := w.act(context.Background(), op, w.gpus[0], req, env, w.handlers[op], rw)
	if err != nil {
		t.Fatalf("%s as %q: %v", op, tenant, err)
	}
	return bytes.Clone(got)
}

// built is the reply to body for op built anew, as without recent replies.
func built(t *testing.T, w *Worker, tenant string, op subjects.Op, body string) []byte {
	t.Helper()
	g := w.gpus[0]
	r := g.recent[op]
	delete(g.recent, op)
	defer func() { g.recent[op] = r }()
	return call(t, w, tenant, op, body)
}

// recentHolds reports whether a recent reply to body for op would be sent
// now.
func recentHolds(w *Worker, tenant string, op subjects.Op, body string) bool {
	env, err := subjects.DecodeRequest([]byte(body), op)
	if err != nil {
		panic(err)
	}
	g := w.gpus[0]
	pinned := w.pinnedPool()
	g.mu.Lock()
	defer g.mu.unlockRead()
	return g.recent[op].find(g, ledger.Call{Who: ledger.Who{Tenant: tenant}, Now: time.Now()}, env.Data, pinned) != nil
}

// pollUntilRecent polls until a recent reply is in force (the first
// reply may have taken a reading at its own moment, which is not kept),
// and returns the reply.
func pollUntilRecent(t *testing.T, w *Worker, tenant string, op subjects.Op, body string) []byte {
	t.Helper()
	for range 10 {
		got := call(t, w, tenant, op, body)
		if recentHolds(w, tenant, op, body) {
			return got
		}
	}
	t.Fatalf("%s %s as %q: no recent reply after 10 polls", op, body, tenant)
	return nil
}

// allocationID is an allocation of tenant t's.
func allocationID(t *testing.T, w *Worker) string {
	t.Helper()
	var list subjects.AllocationsReply
	if _, err := subjects.DecodeReply(call(t, w, "t", subjects.GetAllocations, `{}`), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Allocations) == 0 {
		t.Fatal("tenant t has no allocation")
	}
	return list.Allocations[0].AllocationID
}

// sameReply compares two replies but for the moment each was made: the
// envelope's id and timestamp, sampled_at, and the pressure trend (which
// moves with time alone, and a recent reply's is as old as its readings).
func sameReply(a, b []byte) bool {
	return cmp.Equal(normalOf(a), normalOf(b))
}

func normal(t *testing.T, body []byte) any {
	t.Helper()
	v := normalOf(body)
	if v == nil {
		t.Fatalf("not JSON: %s", body)
	}
	return v
}

func normalOf(body []byte) any {
	var v map[string]any
	if json.Unmarshal(body, &v) != nil {
		return nil
	}
	delete(v, "request_id")
	delete(v, "timestamp")
	var strip func(any)
	strip = func(x any) {
		switch x := x.(type) {
		case map[string]any:
			delete(x, "sampled_at")
			delete(x, "trend")
			for _, y := range x {
				strip(y)
			}
		case []any:
			for _, y := range x {
				strip(y)
			}
		}
	}
	strip(v)
	return v
}

// TestARecentReplyIsTheRequestsOwn: requests that differ in what they ask
// for, polled in turn, each get their own reply, recent or not.
func TestARecentReplyIsTheRequestsOwn(t *testing.T) {
	w, _ := testWorker(t, "n", func(c *Config) { c.TruthMaxAge, c.TelemetryMaxAge = time.Hour, time.Hour })
	call(t, w, "", subjects.Allocate, `{"data":{"size_bytes":1048576,"purpose":"kv"}}`)
	bodies := []string{
		`{}`,
		`{"data":{"include_allocations":true}}`,
		`{"data":{"include_usage_stats":false}}`,
		`{"data":{"include_fragmentation":true}}`,
		`{"data":{"include_allocations":true,"include_usage_stats":false,"include_fragmentation":true}}`,
	}
	for _, body := range bodies {
		pollUntilRecent(t, w, "", subjects.GetStatus, body)
	}
	for round := range 3 {
		for _, body := range bodies {
			got, fresh := call(t, w, "", subjects.GetStatus, body), built(t, w, "", subjects.GetStatus, body)
			if !sameReply(got, fresh) {
				t.Errorf("round %d, get_status %s: not the reply built anew (-built +sent):\n%s", round, body, cmp.Diff(normal(t, fresh), normal(t, got)))
			}
		}
	}
}
