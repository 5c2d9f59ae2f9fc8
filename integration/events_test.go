package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/node"
)

type received struct {
	msg  *nats.Msg
	e    event.Event
	data events.Pressure
}

// subscribeEvents collects the pressure events of dev.
func subscribeEvents(t testing.TB, nc *nats.Conn, dev string) func(timeout time.Duration) received {
	t.Helper()
	sub, err := nc.SubscribeSync(subjects.PressureEvents(dev))
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	return func(timeout time.Duration) received {
		t.Helper()
		msg, err := sub.NextMsg(timeout)
		if err != nil {
			t.Fatalf("no pressure event for %s: %v", dev, err)
		}
		e, data, err := events.Decode(msg)
		if err != nil {
			t.Fatalf("decoding %s: %v", msg.Data, err)
		}
		return received{msg, e, data}
	}
}

// drive takes a 1 GiB device through every level and back: warning by
// allocation, critical by another process, held by hysteresis, warning and
// normal by freeing.
func drive(t testing.TB, nc *nats.Conn, h *host, dev string) {
	t.Helper()
	driveWith(t, h, func(op subjects.Op, data, out any) { call(t, nc, op, dev, data, out) })
}

// driveWith is drive with the requests made by do.
func driveWith(t testing.TB, h *host, do func(op subjects.Op, data, out any)) {
	t.Helper()
	var a subjects.Allocation
	do(subjects.Allocate, subjects.AllocateRequest{SizeBytes: 880 * MiB, ModelID: "llama"}, &a) // 0.859
	h.external(t, 0, 100*MiB)                                                                   // 0.957
	do(subjects.GetPressure, nil, nil)
	h.external(t, 0, 80*MiB) // 0.9375: inside the margin
	do(subjects.GetPressure, nil, nil)
	h.external(t, 0, 0)
	do(subjects.GetPressure, nil, nil)                                                     // 0.859
	do(subjects.Deallocate, subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil) // cached: available
	do(subjects.Clear, nil, nil)
}

var wantLevels = []subjects.Level{subjects.LevelNormal, subjects.LevelWarning, subjects.LevelCritical, subjects.LevelWarning, subjects.LevelNormal}

func TestPressureEventsFollowTheLevels(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv)
	next := subscribeEvents(t, nc, "n1-gpu0")
	h := startWorker(t, srv, "n1", withDevices(2, GiB))
	drive(t, nc, h, "n1-gpu0")

	ids := map[string]bool{}
	var got []subjects.Level
	for i, want := range wantLevels {
		r := next(2 * time.Second)
		e, d := r.e, r.data
		got = append(got, d.Level)
		if d.Level != want {
			t.Fatalf("event %d: level %s, want %s (so far %v)", i, d.Level, want, got)
		}
		if r.msg.Header.Get("Content-Type") != events.ContentTypeStructured {
			t.Errorf("Content-Type %q", r.msg.Header.Get("Content-Type"))
		}
		if e.SpecVersion() != "1.0" || e.Type() != events.TypePressure || e.Source() != "/memworker/n1/n1-gpu0" ||
			e.Subject() != "n1-gpu0" || e.DataContentType() != "application/json" || e.Time().IsZero() || ids[e.ID()] {
			t.Errorf("event %d attributes: %s", i, e)
		}
		ids[e.ID()] = true
		if d.DeviceID != "n1-gpu0" || d.Node != "n1" || d.TotalBytes != GiB || d.WarningThreshold != 0.85 || d.CriticalThreshold != 0.95 ||
			d.UsedBytes+d.FreeBytes != d.TotalBytes || d.UsageRatio != float64(d.UsedBytes)/float64(GiB) {
			t.Errorf("event %d data %+v", i, d)
		}
		wantReason := events.ReasonChanged
		if i == 0 {
			wantReason = events.ReasonStartup
		}
		if d.Reason != wantReason || (i > 0 && d.PreviousLevel != wantLevels[i-1]) {
			t.Errorf("event %d: reason %s previous %s", i, d.Reason, d.PreviousLevel)
		}
		if i == 2 {
			names := []string{}
			for _, c := range d.TopConsumers {
				names = append(names, c.Kind+":"+c.Name)
			}
			if !slices.Contains(names, "model:llama") || !slices.Contains(names, "other_processes:other_processes") {
				t.Errorf("critical event names consumers %v, want the model and other processes", names)
			}
		}
	}
	// get_pressure answers with the level the last event announced.
	var p subjects.Pressure
	call(t, nc, subjects.GetPressure, "n1-gpu0", nil, &p)
	if p.Level != wantLevels[len(wantLevels)-1] {
		t.Errorf("get_pressure says %s after the last event announced %s", p.Level, wantLevels[len(wantLevels)-1])
	}
}

func TestPressureEventsReplayFromJetStream(t *testing.T) {
	srv := startJetStreamServer(t)
	nc := connect(t, srv)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	drive(t, nc, h, "n1-gpu0") // nobody is listening

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.PressureEvents("n1-gpu0")},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []subjects.Level
	for len(got) < len(wantLevels) {
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			t.Fatalf("replayed %v, then: %v", got, err)
		}
		_, d, err := events.Decode(&nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, d.Level)
	}
	if !slices.Equal(got, wantLevels) {
		t.Errorf("replayed %v, want %v", got, wantLevels)
	}
	info, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := info.CachedInfo().Config; cfg.Duplicates == 0 || cfg.MaxAge == 0 {
		t.Errorf("stream %+v: want dedupe and a bounded age", cfg)
	}
}

func TestPressureEventsInBinaryMode(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv)
	next := subscribeEvents(t, nc, "n1-gpu0")
	startWorker(t, srv, "n1", withConfig(func(c *worker.Config) { c.EventsBinary = true }))
	r := next(2 * time.Second)
	if r.msg.Header.Get("ce-specversion") != "1.0" || r.msg.Header.Get("ce-type") != events.TypePressure ||
		r.msg.Header.Get("Content-Type") != "application/json" || r.data.Reason != events.ReasonStartup {
		t.Errorf("binary event headers %v data %+v", r.msg.Header, r.data)
	}
}

func TestCriticalIsRepeated(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv)
	next := subscribeEvents(t, nc, "n1-gpu0")
	h := startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) {
		c.SampleInterval = 10 * time.Millisecond
		c.CriticalRepeat = 50 * time.Millisecond
	}))
	if r := next(2 * time.Second); r.data.Reason != events.ReasonStartup {
		t.Fatalf("first event %+v", r.data)
	}
	h.external(t, 0, 1000*MiB)
	if r := next(2 * time.Second); r.data.Level != subjects.LevelCritical || r.data.Reason != events.ReasonChanged {
		t.Fatalf("want critical, got %+v", r.data)
	}
	for i := 0; i < 2; i++ {
		if r := next(2 * time.Second); r.data.Level != subjects.LevelCritical || r.data.Reason != events.ReasonRepeat {
			t.Fatalf("repeat %d: %+v", i, r.data)
		}
	}
}

func TestUnavailableDevicesAreAnnounced(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv)
	next := subscribeEvents(t, nc, "n1-gpu0")
	h := startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) { c.SampleInterval = 10 * time.Millisecond }))
	f := h.faults(t)
	if r := next(2 * time.Second); r.data.Reason != events.ReasonStartup {
		t.Fatalf("first event %+v", r.data)
	}
	f.SetUnavailable(0, true)
	for {
		r := next(2 * time.Second)
		if r.data.Reason == events.ReasonUnavailable {
			break
		}
	}
	f.SetUnavailable(0, false)
	if r := next(2 * time.Second); r.data.Reason != events.ReasonAvailable || r.data.Level != subjects.LevelNormal {
		t.Errorf("after the device came back: %+v, want an available event", r.data)
	}
}

// TestStartupEventTellsTheLevelFound sends allocations that cross the
// warning threshold from before the worker serves: however soon the first
// one lands, the first event is the level the worker found at startup.
func TestStartupEventTellsTheLevelFound(t *testing.T) {
	// Not in parallel: its client asks in a tight loop until the worker
	// serves, which would take the CPU from the tests beside it.
	srv := startServer(t)
	nc := connect(t, srv)
	next := subscribeEvents(t, nc, "n1-gpu0")
	body, _ := subjects.NewRequest("", subjects.Allocate, subjects.AllocateRequest{SizeBytes: 900 * MiB})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if msg, err := nc.Request(subjects.Request(subjects.Allocate, "n1-gpu0"), body, time.Second); err == nil {
				if _, err := subjects.DecodeReply(msg.Data, nil); err == nil {
					return // one allocation is enough to cross the threshold
				}
			}
		}
	}()
	startWorker(t, srv, "n1", withDevices(1, GiB))
	first := next(2 * time.Second).data
	close(stop)
	<-done
	if first.Reason != events.ReasonStartup || first.Level != subjects.LevelNormal {
		t.Errorf("first event: %s at %s, want startup at normal", first.Reason, first.Level)
	}
}

// TestALostEventStreamIsRecreated: with the event stream deleted under a
// running worker, every level change still reaches subscribers at once
// (none waits for an acknowledgement that cannot come), the stream is
// created again, and it keeps the events after it and, sent again with
// their ids, those that found no stream: each once.
func TestALostEventStreamIsRecreated(t *testing.T) {
	t.Parallel() // a server and worker of its own; it mostly waits
	srv := startJetStreamServer(t)
	nc := connect(t, srv)
	next := subscribeEvents(t, nc, "n1-gpu0")
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	next(2 * time.Second) // startup
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, events.StreamName); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{} // by core subscribers: once, or again when sent again
	round := func(n int) {
		drive(t, nc, h, "n1-gpu0")
		for i := 0; i < len(wantLevels)-1; {
			r := next(time.Second)
			if seen[r.e.ID()] {
				continue
			}
			seen[r.e.ID()] = true
			if want := wantLevels[1+i]; r.data.Level != want {
				t.Fatalf("round %d, event %d: level %s, want %s", n, i, r.data.Level, want)
			}
			i++
		}
	}
	round(1)
	s := eventStreamMade(t, ctx, js, "the stream was not created again")
	round(2)
	want := append(append([]subjects.Level{}, wantLevels[1:]...), wantLevels[1:]...)
	var got []kept
	for deadline := time.Now().Add(10 * time.Second); len(got) < len(want) && time.Now().Before(deadline); {
		got = replayEvents(t, ctx, s, 500*time.Millisecond)
	}
	ids := map[string]bool{}
	var levels []subjects.Level
	for _, e := range got {
		if ids[e.id] {
			t.Errorf("the stream kept event %s twice", e.id)
		}
		ids[e.id] = true
		if !seen[e.id] {
			t.Errorf("the stream kept event %s, which no subscriber saw", e.id)
		}
		levels = append(levels, e.level)
	}
	if !slices.Equal(levels, want) {
		t.Errorf("the stream kept %v, want both rounds %v", levels, want)
	}
}

// TestStartedEventNamesAKilledInstanceAsGone: a worker that vanished
// without its stopped event (kill -9: its record is left behind) is named
// by the next worker's started event, so clients learn its allocation ids
// are void; after a clean stop the next start names nobody.
func TestStartedEventNamesAKilledInstanceAsGone(t *testing.T) {
	srv := startJetStreamServer(t)
	nc := connect(t, srv)
	life, err := nc.SubscribeSync(subjects.LifecycleEvents("n1"))
	if err != nil {
		t.Fatal(err)
	}
	started := func() events.Lifecycle {
		t.Helper()
		for {
			msg, err := life.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			e, d, err := events.DecodeLifecycle(msg)
			if err != nil {
				t.Fatal(err)
			}
			if e.Type() == events.TypeWorkerStarted {
				return d
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := startWorkerCtx(t, ctx, srv, "n1", withDevices(1, GiB))
	first := started()
	if first.GoneInstance != "" {
		t.Errorf("first start names %q as gone", first.GoneInstance)
	}
	cancel() // a clean stop
	h.wait()

	// What a killed worker leaves: its record.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), worker.InstanceBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(context.Background(), "n1"); err == nil {
		t.Error("a clean stop left its instance record")
	}
	if _, err := kv.Put(context.Background(), "n1", []byte("killed-instance")); err != nil {
		t.Fatal(err)
	}
	startWorker(t, srv, "n1", withDevices(1, GiB))
	if d := started(); d.GoneInstance != "killed-instance" {
		t.Errorf("started after a kill names %q as gone, want killed-instance", d.GoneInstance)
	}
}

// TestLeasesRunOutUnlessRenewed: a lease renewed (by the Go client's
// keep-alive) lives on; one not renewed is freed and its expiry published
// on memory.allocation.<device_id>.<tenant> (the operator's: _).
//
// A keep-alive must renew within the ttl; that window is what it is for,
// so the test keeps it but makes it wide: a 1.5 s ttl renewed every 0.5 s
// leaves a second for each renewal to arrive (with 0.3 s renewed every
// 0.1 s a renewal late by 0.2 s, a busy machine's stall, let the lease
// lapse). A wider window cannot help a keep-alive that does not renew: the
// test does not sleep for a ttl and hope, it waits for the worker's
// expiry sweeps and checks the moment each one recorded (observed_at) was
// past the kept lease's expiry as it stood, first as it was allocated and
// then as renewed, so a lease not renewed again would have been freed by
// it.
func TestLeasesRunOutUnlessRenewed(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	sub, err := nc.SubscribeSync(subjects.AllocationEvents(dev, ""))
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 1500 * time.Millisecond
	var kept, dropped subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: ttl.Seconds()}, &kept)
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 2 * MiB, TTLSeconds: ttl.Seconds()}, &dropped)
	if kept.ExpiresAt == nil || dropped.ExpiresAt == nil {
		t.Fatalf("leases without an expiry: %+v, %+v", kept, dropped)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := client.New(nc).KeepAlive(ctx, dev, ttl, kept.AllocationID)

	// expired waits for the next expiry event, which must free only id,
	// and returns when the sweep that freed it ran.
	expired := func(id string, size int64) time.Time {
		t.Helper()
		msg, err := sub.NextMsg(ttl + 10*time.Second)
		if err != nil {
			t.Fatalf("no expiry event for %s: %v", id, err)
		}
		typ, e, err := events.DecodeAllocation(msg)
		if err != nil || typ != events.TypeAllocationExpired || e.AllocationID != id || !slices.Equal(e.AllocationIDs, []string{id}) || e.SizeBytes != size || e.ExpiresAt == nil || e.ObservedAt.IsZero() {
			t.Fatalf("event %s %+v, %v; want the expiry of %s alone", typ, e, err, id)
		}
		return e.ObservedAt
	}
	// livesOn checks the kept lease is the one left, renewed past was
	// (its expiry before), and returns its expiry and the worker's now.
	livesOn := func(was time.Time) (expires, now time.Time) {
		t.Helper()
		var page subjects.AllocationsReply
		reply := call(t, nc, subjects.GetAllocations, dev, nil, &page)
		if page.TotalCount != 1 || page.Allocations[0].AllocationID != kept.AllocationID {
			t.Fatalf("allocations %+v, want only the renewed lease", page.Allocations)
		}
		a := page.Allocations[0]
		if a.ExpiresAt == nil || !a.ExpiresAt.After(was) {
			t.Fatalf("the kept lease expires at %v, not after %v: not renewed", a.ExpiresAt, was)
		}
		return *a.ExpiresAt, reply.Timestamp
	}

	// The sweep that freed dropped ran past kept's first expiry: kept
	// lives on a renewal.
	swept := expired(dropped.AllocationID, 2*MiB)
	if swept.Before(*kept.ExpiresAt) {
		t.Fatalf("dropped was freed at %v, before kept's first expiry %v", swept, *kept.ExpiresAt)
	}
	renewed, now := livesOn(*kept.ExpiresAt)
	// A lease that runs out no sooner than kept as renewed now: the sweep
	// that frees it has passed that expiry too, so kept lives on renewals.
	var marker subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: (renewed.Sub(now) + time.Millisecond).Seconds()}, &marker)
	if swept := expired(marker.AllocationID, MiB); swept.Before(renewed) {
		t.Fatalf("the marker was freed at %v, before kept's renewed expiry %v", swept, renewed)
	}
	livesOn(renewed)
	select {
	case err := <-errs:
		t.Errorf("keep-alive: %v", err)
	default:
	}
	// renew is all or nothing, and needs a lease (or a ttl).
	var r subjects.RenewReply
	reply := call(t, nc, subjects.Renew, dev, subjects.RenewRequest{AllocationID: kept.AllocationID, TTLSeconds: 60}, &r)
	// From the worker's own now (the reply's timestamp), not this test's
	// clock after the reply came back.
	if len(r.Renewed) != 1 || r.Renewed[0].ExpiresAt.Sub(reply.Timestamp) < 59*time.Second || r.Renewed[0].ExpiresAt.Sub(reply.Timestamp) > 60*time.Second {
		t.Errorf("renew for 60 s at %v: %+v", reply.Timestamp, r)
	}
	callErr(t, nc, subjects.Renew, dev, mustJSON(t, map[string]any{"data": map[string]any{"allocation_ids": []string{kept.AllocationID, dropped.AllocationID}}}), subjects.CodeAllocationNotFound)
	var plain subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB}, &plain)
	callErr(t, nc, subjects.Renew, dev, mustJSON(t, map[string]any{"data": map[string]any{"allocation_id": plain.AllocationID}}), subjects.CodeInvalidRequest)
	cancel()
	checkLedger(t, nc, h, dev, 0)
}

// replayLevels reads a stream's pressure events from its start until none
// comes for wait, and returns their levels.
func replayLevels(t *testing.T, ctx context.Context, s jetstream.Stream, wait time.Duration) []subjects.Level {
	t.Helper()
	var levels []subjects.Level
	for _, e := range replayEvents(t, ctx, s, wait) {
		levels = append(levels, e.level)
	}
	return levels
}

// kept is a pressure event as the stream keeps it.
type kept struct {
	id    string
	at    time.Time
	level subjects.Level
}

// replayEvents reads the stream's pressure events until none comes for
// wait, in the order of their time: an event the stream did not
// acknowledge at first is sent again, and lands after newer ones.
func replayEvents(t *testing.T, ctx context.Context, s jetstream.Stream, wait time.Duration) []kept {
	t.Helper()
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.AllPressureEvents}})
	if err != nil {
		t.Fatal(err)
	}
	var got []kept
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(wait))
		if err != nil {
			slices.SortStableFunc(got, func(a, b kept) int { return a.at.Compare(b.at) })
			return got
		}
		e, d, err := events.Decode(&nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, kept{id: e.ID(), at: e.Time(), level: d.Level})
	}
}

// TestAnEventStreamThatCannotBeSetUpAtStartIsCreatedLater: JetStream
// answers but refuses the event stream when the worker starts (another
// stream holds its subjects, as a cluster still placing peers or electing
// a leader would refuse it too). The worker still holds its node's lease,
// events reach core subscribers, and the stream is created once it can be.
// (It used to fall back to core NATS for good, and run without a lease.)
func TestAnEventStreamThatCannotBeSetUpAtStartIsCreatedLater(t *testing.T) {
	t.Parallel() // a server and worker of its own; it mostly waits
	srv := startJetStreamServer(t)
	nc := connect(t, srv)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SQUATTER", Subjects: []string{"memory.pressure.>"}}); err != nil {
		t.Fatal(err)
	}
	next := subscribeEvents(t, nc, "n1-gpu0")
	h := startWorker(t, srv, "n1", withDevices(1, GiB))
	next(2 * time.Second) // startup, on core NATS
	leases, err := js.KeyValue(ctx, node.NodeLeaseBucket)
	if err != nil {
		t.Fatalf("no lease bucket: the worker runs without its node's lease: %v", err)
	}
	if _, err := leases.Get(ctx, "n1"); err != nil {
		t.Fatalf("the worker does not hold its node's lease: %v", err)
	}
	if err := js.DeleteStream(ctx, "SQUATTER"); err != nil {
		t.Fatal(err)
	}
	s := eventStreamMade(t, ctx, js, "the event stream was not created once it could be")
	drive(t, nc, h, "n1-gpu0")
	if kept := replayLevels(t, ctx, s, 500*time.Millisecond); !slices.Equal(kept, wantLevels[1:]) {
		t.Errorf("the stream kept %v, want %v", kept, wantLevels[1:])
	}
}

// eventStreamMade waits, at most 10 s, for the worker to create the event
// stream, and fails with what otherwise.
func eventStreamMade(t *testing.T, ctx context.Context, js jetstream.JetStream, what string) jetstream.Stream {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		s, err := js.Stream(ctx, events.StreamName)
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
	}
}
