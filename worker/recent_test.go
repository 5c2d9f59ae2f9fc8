package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
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
			call(t, w, "t", subjects.Deallocate, `{"data":{"allocation_id":"`+allocationIDOf(t, w, "t")+`"}}`)
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
				if !ch.due { // with readings of 20 ms, one may fall due between the two
					if got, fresh := call(t, w, tenant, rd.op, rd.body), built(t, w, tenant, rd.op, rd.body); !sameReply(got, fresh) {
						t.Fatalf("%s: the recent reply is not the one built anew:\n%s", name, cmp.Diff(normal(t, fresh), normal(t, got)))
					}
				}
				ch.change(t, w, b)
				if ch.due {
					time.Sleep(30 * time.Millisecond)
				}
				if recentHolds(w, tenant, rd.op, rd.body) {
					t.Errorf("%s: the recent reply still holds", name)
				}
				got := call(t, w, tenant, rd.op, rd.body)
				if !ch.due {
					if fresh := built(t, w, tenant, rd.op, rd.body); !sameReply(got, fresh) {
						t.Errorf("%s: the reply after the change is not the one built anew (-built +sent):\n%s", name, cmp.Diff(normal(t, fresh), normal(t, got)))
					}
				}
				if sameReply(before, got) && !ch.notIn[rd.op] {
					t.Errorf("%s: the change does not show", name)
				}
			}
		}
	}
}

// TestARecentReplyEndsWhenATransferCompletes: a transfer's copy runs
// apart from the requests, and takes the device when it is done; a recent
// reply kept while it copied no longer holds after.
func TestARecentReplyEndsWhenATransferCompletes(t *testing.T) {
	w, b := testWorker(t, "n", func(c *Config) { c.TruthMaxAge, c.TelemetryMaxAge = time.Hour, time.Hour })
	b.SetCopyDelay(200 * time.Millisecond)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { defer close(done); w.transfers.Run(context.Background(), stop) }()
	defer func() { close(stop); <-done }()
	call(t, w, "", subjects.Allocate, `{"data":{"size_bytes":4194304,"purpose":"kv"}}`)
	var st subjects.TransferStatus
	if _, err := subjects.DecodeReply(call(t, w, "", subjects.Transfer, `{"data":{"allocation_id":"`+allocationIDOf(t, w, "")+`","target_allocation_type":"PINNED","mode":"move"}}`), &st); err != nil {
		t.Fatal(err)
	}
	before := pollUntilRecent(t, w, "", subjects.GetStatus, `{}`)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var got subjects.TransferStatus
		if _, err := subjects.DecodeReply(call(t, w, "", subjects.GetTransfer, `{"data":{"transfer_id":"`+st.TransferID+`"}}`), &got); err != nil {
			t.Fatal(err)
		}
		if got.Status == subjects.TransferCompleted {
			break
		}
		if got.Status == subjects.TransferFailed || time.Now().After(deadline) {
			t.Fatalf("transfer: %+v, want completed", got)
		}
	}
	if recentHolds(w, "", subjects.GetStatus, `{}`) {
		t.Error("the recent reply kept while the transfer copied still holds once it completed")
	}
	got, fresh := call(t, w, "", subjects.GetStatus, `{}`), built(t, w, "", subjects.GetStatus, `{}`)
	if !sameReply(got, fresh) {
		t.Errorf("the reply after the transfer is not the one built anew (-built +sent):\n%s", cmp.Diff(normal(t, fresh), normal(t, got)))
	}
	if sameReply(before, got) {
		t.Error("the transfer does not show")
	}
}

// TestARecentReplyOutlivesAReadingThatFindsTheDeviceAsItWas: on an idle
// device a reading falls due every TruthMaxAge and finds the figures as
// they were; the recent reply still holds, and is the reply built anew.
func TestARecentReplyOutlivesAReadingThatFindsTheDeviceAsItWas(t *testing.T) {
	w, _ := testWorker(t, "n", func(c *Config) { c.TruthMaxAge, c.TelemetryMaxAge = 2*time.Millisecond, time.Hour })
	call(t, w, "t", subjects.Allocate, `{"data":{"size_bytes":1048576,"purpose":"kv"}}`)
	for _, op := range keptReplies {
		for _, tenant := range []string{"", "t"} {
			pollUntilRecent(t, w, tenant, op, `{}`)
			time.Sleep(10 * time.Millisecond) // a reading is due
			if !recentHolds(w, tenant, op, `{}`) {
				t.Errorf("%s as %q: a reading that finds the device as it was ends the recent reply", op, tenant)
			}
			if got, fresh := call(t, w, tenant, op, `{}`), built(t, w, tenant, op, `{}`); !sameReply(got, fresh) {
				t.Errorf("%s as %q: the recent reply is not the one built anew:\n%s", op, tenant, cmp.Diff(normal(t, fresh), normal(t, got)))
			}
		}
	}
}

// TestAFailingDeviceIsAskedOnceARequest: with several recent replies kept
// (the figures changed between them), a request to a device that no longer
// answers asks the driver once, as a build would, and gets its error.
func TestAFailingDeviceIsAskedOnceARequest(t *testing.T) {
	b := &readingsBackend{Backend: sim.New(sim.Default(1, 1<<30))}
	w, _ := testWorker(t, "n", func(c *Config) {
		c.Backend = b
		c.TruthMaxAge, c.TelemetryMaxAge = time.Millisecond, time.Hour
	})
	pollUntilRecent(t, w, "", subjects.GetStatus, `{}`)
	for i := int64(1); i <= 3; i++ {
		b.SetExternalUsage(0, i<<26)
		time.Sleep(2 * time.Millisecond)
		pollUntilRecent(t, w, "", subjects.GetStatus, `{}`)
	}
	b.SetUnavailable(0, true)
	time.Sleep(2 * time.Millisecond)
	before := b.all.Load()
	if _, err := tryCall(w, "", subjects.GetStatus, `{}`); !isCode(err, subjects.CodeDeviceUnavailable) {
		t.Fatalf("get_status of a device that does not answer: %v, want DEVICE_UNAVAILABLE", err)
	}
	if n := b.all.Load() - before; n != 1 {
		t.Errorf("one get_status asked the failing driver %d times", n)
	}
}

// TestARecentReplyFitsTheMaxPayload: a recent reply sent again with a
// longer request_id than it was kept with is refused, as the reply built
// anew is, when it would be over the server's max payload.
func TestARecentReplyFitsTheMaxPayload(t *testing.T) {
	w, _ := testWorker(t, "n", func(c *Config) { c.TruthMaxAge, c.TelemetryMaxAge = time.Hour, time.Hour })
	call(t, w, "", subjects.Allocate, `{"data":{"size_bytes":1048576,"purpose":"kv"}}`)
	const data = `"data":{"include_allocations":true}`
	short := `{"request_id":"a",` + data + `}`
	w.maxPayload = int64(len(pollUntilRecent(t, w, "", subjects.GetStatus, short))) + 32
	long := `{"request_id":"` + strings.Repeat("x", 200) + `",` + data + `}`
	if !recentHolds(w, "", subjects.GetStatus, long) {
		t.Fatal("no recent reply for the longer request_id: the test tests nothing")
	}
	if got, err := tryCall(w, "", subjects.GetStatus, long); !isCode(err, subjects.CodeInvalidRequest) {
		t.Errorf("recent reply over the max payload of %d: %d bytes, %v; want INVALID_REQUEST", w.maxPayload, len(got), err)
	}
}

// TestARecentReplyReadsThePinnedPoolAtItsMoment: a request that waits for
// the device's lock while the host's pinned pool changes gets the pool's
// figures as of its own moment, not as of its arrival.
func TestARecentReplyReadsThePinnedPoolAtItsMoment(t *testing.T) {
	w, _ := testWorker(t, "n", func(c *Config) { c.TruthMaxAge, c.TelemetryMaxAge = time.Hour, time.Hour })
	pollUntilRecent(t, w, "", subjects.GetUsage, `{}`)
	g := w.gpus[0]
	g.mu.Lock() // a read holds the device
	type result struct {
		body []byte
		err  error
	}
	done := make(chan result)
	go func() {
		b, err := tryCall(w, "", subjects.GetUsage, `{}`)
		done <- result{b, err}
	}()
	time.Sleep(50 * time.Millisecond) // it waits for the lock
	if err := w.pinned.Ahead(context.Background(), 4<<20); err != nil {
		g.mu.unlockRead()
		t.Fatal(err)
	}
	after := w.pinned.Figures()
	g.mu.unlockRead()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	var u subjects.Usage
	if _, err := subjects.DecodeReply(res.body, &u); err != nil {
		t.Fatal(err)
	}
	if u.PinnedPool == nil || u.PinnedPool.PinnedBytes != after.PinnedBytes {
		t.Errorf("reply sampled after the pool changed to %d pinned bytes shows %+v", after.PinnedBytes, u.PinnedPool)
	}
}

// call runs body for op on w's first device as tenant ("" the operator)
// and returns the reply's body.
func call(t *testing.T, w *Worker, tenant string, op subjects.Op, body string) []byte {
	t.Helper()
	got, err := tryCall(w, tenant, op, body)
	if err != nil {
		t.Fatalf("%s as %q: %v", op, tenant, err)
	}
	if at, ok := sampledAtNow(got); !ok {
		t.Fatalf("%s as %q: a sampled_at is not the reply's timestamp, the request's moment (%s): %s", op, tenant, at, got)
	}
	return got
}

// tryCall is call's request: the reply's body, or the error.
func tryCall(w *Worker, tenant string, op subjects.Op, body string) ([]byte, error) {
	req := &testRequest{data: []byte(body)}
	if tenant != "" {
		req.reply = "_R_.x"
		req.headers = micro.Headers{requestInfoHeader: {`{"acc":"` + tenant + `"}`}}
	}
	env, err := subjects.DecodeRequest(req.data, op)
	if err != nil {
		return nil, err
	}
	rw := newReplyWriter()
	defer rw.release()
	got, err := w.act(context.Background(), op, w.gpus[0], req, env, w.handlers[op], rw)
	return bytes.Clone(got), err
}

// sampledAtNow reports whether every sampled_at in a reply is its
// timestamp: the reply's figures are as of the request's moment, whether
// the reply was built for it or kept.
func sampledAtNow(body []byte) (string, bool) {
	var v map[string]any
	if json.Unmarshal(body, &v) != nil {
		return "", false
	}
	now, _ := v["timestamp"].(string)
	ok := true
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case map[string]any:
			if at, has := x["sampled_at"]; has && !sameInstant(at, now) {
				ok = false
			}
			for _, y := range x {
				walk(y)
			}
		case []any:
			for _, y := range x {
				walk(y)
			}
		}
	}
	walk(v["data"])
	return now, ok
}

// sameInstant reports whether a (a JSON value) is the time text b names.
func sameInstant(a any, b string) bool {
	s, _ := a.(string)
	x, err1 := time.Parse(time.RFC3339Nano, s)
	y, err2 := time.Parse(time.RFC3339Nano, b)
	return err1 == nil && err2 == nil && x.Equal(y)
}

// isCode reports whether err is a wire error of code.
func isCode(err error, code subjects.Code) bool { return wireError(err).Code == code }

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
	x, err := g.recent[op].find(context.Background(), g, ledger.Call{Who: ledger.Who{Tenant: tenant}, Now: time.Now()}, env.Data, pinned)
	return x != nil && err == nil
}

// pollUntilRecent polls until a recent reply is in force (the first
// reply may have taken a reading at its own moment, which is not kept),
// and returns the reply.
func pollUntilRecent(t *testing.T, w *Worker, tenant string, op subjects.Op, body string) []byte {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		got := call(t, w, tenant, op, body)
		if recentHolds(w, tenant, op, body) {
			return got
		}
	}
	t.Fatalf("%s %s as %q: no recent reply after 5 s of polling", op, body, tenant)
	return nil
}

// allocationIDOf is an allocation of tenant's ("": the operator's).
func allocationIDOf(t *testing.T, w *Worker, tenant string) string {
	t.Helper()
	var list subjects.AllocationsReply
	if _, err := subjects.DecodeReply(call(t, w, tenant, subjects.GetAllocations, `{}`), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Allocations) == 0 {
		t.Fatalf("%q has no allocation", tenant)
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

// TestAClientSeesItsOwnChangeInTheNextStatus: over NATS, with pollers
// keeping the device's recent reply in use, a client that got its
// allocate's or deallocate's reply sees the change in its next get_status,
// and so does a second client it tells.
func TestAClientSeesItsOwnChangeInTheNextStatus(t *testing.T) {
	nc, _ := serving(t, func(c *Config) {
		c.TruthMaxAge, c.TelemetryMaxAge, c.SampleInterval = time.Hour, time.Hour, time.Hour
		c.ReadHandlers = 4
	})
	other, err := nats.Connect(nc.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		pc, err := nats.Connect(nc.ConnectedUrl())
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := pc.Request(subjects.Request(subjects.GetStatus, "n-gpu0"), []byte(`{}`), 5*time.Second); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	count := func(conn *nats.Conn) int {
		t.Helper()
		var st subjects.StatusReply
		ask(t, conn, subjects.GetStatus, `{}`, &st)
		return st.AllocationCount
	}
	var ids []string
	for i := 1; i <= 30; i++ {
		var a subjects.Allocation
		if r := ask(t, nc, subjects.Allocate, `{"data":{"size_bytes":1048576}}`, &a); !r.Success {
			t.Fatalf("allocate: %+v", r)
		}
		ids = append(ids, a.AllocationID)
		if got, gotOther := count(nc), count(other); got != i || gotOther != i {
			t.Fatalf("after allocate %d: the client sees %d allocations, another client %d", i, got, gotOther)
		}
	}
	for i, id := range ids {
		if r := ask(t, nc, subjects.Deallocate, `{"data":{"allocation_id":"`+id+`"}}`, nil); !r.Success {
			t.Fatalf("deallocate: %+v", r)
		}
		if got, want := count(nc), len(ids)-i-1; got != want {
			t.Fatalf("after deallocate %d: the client sees %d allocations, want %d", i+1, got, want)
		}
	}
}
