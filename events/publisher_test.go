package events

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/subjects"
)

// TestEventsNotAcknowledgedAreSentAgainWithinBounds: events published
// while the stream is gone are queued, at most MaxPending of them, the
// newest kept; once Check has the stream again they are sent again with
// their ids and kept once each, and the events pushed out are counted in
// a log line.
func TestEventsNotAcknowledgedAreSentAgainWithinBounds(t *testing.T) {
	nc := natstest.Connect(t, natstest.JetStream(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var logged lines
	p, err := NewPublisher(ctx, nc, Options{JetStream: true, MaxPending: 2, Logf: logged.logf})
	if err != nil || !p.JetStream() {
		t.Fatalf("publisher: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, StreamName); err != nil {
		t.Fatal(err)
	}
	levels := []subjects.Level{subjects.LevelWarning, subjects.LevelCritical, subjects.LevelWarning, subjects.LevelNormal}
	var ids []string
	for i, l := range levels {
		e, err := p.Publish(ctx, Pressure{PressureFigures: subjects.PressureFigures{DeviceID: "n1-gpu0", Level: l, TotalBytes: 100},
			Node: "n1", Reason: ReasonChanged, TopConsumers: []subjects.Consumer{}, ObservedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID())
		// Each fails (no stream answers) before the next goes: the queue,
		// not the publisher's pending bound, decides what is kept.
		waitFor(t, func() bool { return p.queued() == min(i+1, 2) && p.pendingAcks() == 0 })
	}
	p.Check(ctx) // makes the stream, sends the oldest of the two newest again (half of MaxPending at most)
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		t.Fatalf("the stream was not made again: %v", err)
	}
	waitFor(t, func() bool {
		p.Check(ctx)
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs == 2
	})
	p.Check(ctx) // nothing lost since: sends nothing more
	time.Sleep(100 * time.Millisecond)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(300 * time.Millisecond))
		if err != nil {
			break
		}
		e, _, err := Decode(&nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e.ID())
	}
	if want := ids[2:]; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("the stream kept %v, want the two newest %v", got, want)
	}
	p.Close(ctx)
	if !logged.has("2 events were not kept") {
		t.Errorf("no log line counts the 2 events pushed out: %q", logged.l)
	}
}

// lines collects what a publisher logs.
type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) logf(f string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l = append(l.l, fmt.Sprintf(f, args...))
}

// has says whether a line logged holds s.
func (l *lines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(strings.Join(l.l, "\n"), s)
}

// noAckStream makes the event stream, before any publisher does, as one
// that stores events without acknowledging them: as if every
// acknowledgement were lost. (Deleting a stream and making it again at
// once can fail in nats-server: "error creating store for stream".)
func noAckStream(t *testing.T, ctx context.Context, nc *nats.Conn) jetstream.Stream {
	t.Helper()
	defaults, err := NewPublisher(ctx, nc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaults.StreamConfig()
	cfg.NoAck = true
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.CreateStream(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}

func (p *Publisher) queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.unkept)
}

func (p *Publisher) pendingAcks() int { return p.js.PublishAsyncPending() }

// TestARefusedEventIsNotSentAgain: an event the stream refuses (larger
// than it takes) reaches core subscribers once and is not queued: it
// would be refused again, and each sending is one more delivery (found by
// review: one event delivered 7 times in 6 s).
func TestARefusedEventIsNotSentAgain(t *testing.T) {
	nc := natstest.Connect(t, natstest.JetStream(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var logged lines
	p, err := NewPublisher(ctx, nc, Options{JetStream: true, Logf: logged.logf})
	if err != nil || !p.JetStream() {
		t.Fatalf("publisher: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := p.StreamConfig()
	cfg.MaxMsgSize = 64
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	sub, err := nc.SubscribeSync(subjects.PressureEvents("n1-gpu0"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := p.Publish(ctx, Pressure{PressureFigures: subjects.PressureFigures{DeviceID: "n1-gpu0", Level: subjects.LevelWarning, TotalBytes: 100},
		Node: "n1", Reason: ReasonChanged, TopConsumers: []subjects.Consumer{}, ObservedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return p.pendingAcks() == 0 })
	for range 3 {
		p.Check(ctx)
	}
	if n := p.queued(); n != 0 {
		t.Errorf("%d events queued to be sent again after a refusal", n)
	}
	for i := 0; ; i++ {
		msg, err := sub.NextMsg(300 * time.Millisecond)
		if err != nil {
			if i != 1 {
				t.Errorf("subscribers got the refused event %d times, want once", i)
			}
			break
		}
		if got, _, _ := Decode(msg); got.ID() != e.ID() {
			t.Fatalf("an event %s, want %s", got.ID(), e.ID())
		}
	}
	if !logged.has("1 events were not kept") {
		t.Errorf("the refusal is not counted in a log line: %q", logged.l)
	}
}

// TestSendingAgainIsBounded: an event is sent again at most maxResends
// times, and not once its time is past the resend window, so every sending
// reaches the stream within its duplicate window (found by review: an
// event whose bookkeeping was forgotten started a new window and could be
// stored twice).
func TestSendingAgainIsBounded(t *testing.T) {
	p := &Publisher{opts: Options{MaxPending: 8, Logf: func(string, ...any) {}}, inflight: map[*nats.Msg]*unkept{}}
	now := time.Now()
	event := func(at time.Time) *nats.Msg {
		return &nats.Msg{Subject: "memory.pressure.d", Header: nats.Header{"ce-time": []string{at.UTC().Format(time.RFC3339Nano)}}}
	}
	timeout := jetstream.ErrAsyncPublishTimeout
	p.notKept(nil, event(now.Add(-resendWindow-time.Second)), timeout)
	if n := p.queued(); n != 0 {
		t.Errorf("an event past the resend window was queued (%d)", n)
	}
	p.notKept(nil, event(now), timeout)
	for i := 1; i <= maxResends; i++ {
		if p.queued() != 1 {
			t.Fatalf("after %d sendings again: %d queued, want 1", i-1, p.queued())
		}
		u := p.unkept[0]
		u.resends++ // as resend does, sending it
		p.unkept, p.inflight[u.msg] = nil, u
		p.notKept(nil, u.msg, timeout)
		if i < maxResends && !u.next.After(time.Now().Add(backoff(i)-time.Second)) {
			t.Errorf("sending %d again is due at once, want after %s", i+1, backoff(i))
		}
	}
	if n := p.queued(); n != 0 {
		t.Errorf("an event sent again %d times is queued once more", maxResends)
	}
	if p.givenUp != 2 {
		t.Errorf("%d events given up, want 2", p.givenUp)
	}
}

// TestSendingAgainLeavesRoom: however many events wait, one check sends
// again at most half the acknowledgements the publisher may still await,
// so it never stalls on them and new events keep the rest (found by
// review: a pump spent most of each second in Check, and published 395 of
// 2,000 events).
func TestSendingAgainLeavesRoom(t *testing.T) {
	nc := natstest.Connect(t, natstest.JetStream(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	noAckStream(t, ctx, nc) // acknowledgements stay awaited for their 2 s
	p, err := NewPublisher(ctx, nc, Options{JetStream: true, MaxPending: 64})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	for i := range 60 {
		m := &nats.Msg{Subject: subjects.PressureEvents("d"), Header: nats.Header{}, Data: []byte("{}")}
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprint("e", i))
		p.enqueue(&unkept{msg: m, at: time.Now()})
	}
	p.mu.Unlock()
	p.Check(ctx)
	if n := p.pendingAcks(); n > 32 {
		t.Errorf("one check sent %d events again, want at most half of MaxPending (32)", n)
	}
	if n := p.queued(); n < 60-32 {
		t.Errorf("%d events still queued, want at least %d", n, 60-32)
	}
}

// TestAnEventSentAgainIsKeptOnce: an event the stream stored without its
// acknowledgement arriving is sent again with its id, and the stream keeps
// it once.
func TestAnEventSentAgainIsKeptOnce(t *testing.T) {
	nc := natstest.Connect(t, natstest.JetStream(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := noAckStream(t, ctx, nc)
	p, err := NewPublisher(ctx, nc, Options{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, Pressure{PressureFigures: subjects.PressureFigures{DeviceID: "n1-gpu0", Level: subjects.LevelWarning, TotalBytes: 100},
		Node: "n1", Reason: ReasonChanged, TopConsumers: []subjects.Consumer{}, ObservedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return p.queued() == 1 }) // no acknowledgement in 2 s
	p.Check(ctx)
	waitFor(t, func() bool { return p.pendingAcks() == 1 && p.queued() == 0 }) // sent again
	time.Sleep(200 * time.Millisecond)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("the stream holds %d messages for one event sent twice, want 1", info.State.Msgs)
	}
}
