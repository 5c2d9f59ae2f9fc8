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
	var mu sync.Mutex
	var logged []string
	p, err := NewPublisher(ctx, nc, Options{JetStream: true, MaxPending: 2, Logf: func(f string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, fmt.Sprintf(f, args...))
	}})
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
	p.Check(ctx) // makes the stream, sends the two newest again
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		t.Fatalf("the stream was not made again: %v", err)
	}
	waitFor(t, func() bool {
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
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(strings.Join(logged, "\n"), "2 events were not kept") {
		t.Errorf("no log line counts the 2 events pushed out: %q", logged)
	}
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
