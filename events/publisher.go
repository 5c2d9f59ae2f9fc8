package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/memworker/memworker/subjects"
)

// StreamName is the JetStream stream that keeps pressure events.
const StreamName = "MEMORY_PRESSURE"

// Content types.
const (
	ContentTypeStructured = "application/cloudevents+json"
	ContentTypeJSON       = "application/json"
)

// Defaults of the event stream's bounds.
const (
	DefaultMaxBytes      = 256 << 20
	DefaultMaxPerSubject = 100_000
)

// Options tune a Publisher.
type Options struct {
	// Binary sends data as the body and attributes as ce- headers instead
	// of one structured JSON document.
	Binary bool
	// JetStream keeps events in StreamName when the server has JetStream.
	JetStream bool
	// MaxAge bounds how long the stream keeps events (default 24 h);
	// MaxBytes how much (default DefaultMaxBytes); MaxPerSubject how many
	// events of one subject (a device's pressure, a tenant's allocations
	// on a device; default DefaultMaxPerSubject). The oldest go first.
	MaxAge        time.Duration
	MaxBytes      int64
	MaxPerSubject int64
	// Replicas is the stream's replicas; 0 takes the number of servers the
	// connection knows of, at most 3 (1 on a lone server).
	Replicas int
	// MaxPending bounds the events published to the stream and not yet
	// acknowledged (default 256); beyond it events still reach core
	// subscribers, unkept. It bounds as well the events the stream did not
	// acknowledge that wait to be sent again.
	MaxPending int
	// Logf, when set, is told about the stream: lost, recreated, events
	// not kept.
	Logf func(format string, args ...any)
}

// Publisher sends pressure events on one connection. Events always go out
// on core NATS at once; with JetStream the stream stores them as well,
// acknowledged asynchronously, so a slow or missing stream never delays
// delivery. A stream that disappears (deleted, or a server restarted with
// an empty store) is created again. An event the stream did not
// acknowledge (gone, a leader being elected, an acknowledgement lost) is
// sent again with its id by Check, a few times while the stream's
// duplicate window lasts (resend.go): the stream keeps it once, and core
// subscribers may see it more than once, with the same CloudEvent id
// (dedupe by id). Events sent again land after newer ones; their time
// attribute tells their order.
type Publisher struct {
	nc   *nats.Conn
	js   jetstream.JetStream // nil: core publish only
	opts Options

	mu sync.Mutex
	// lost is set when an event was not acknowledged: Check looks for
	// the stream.
	lost bool
	// quietUntil: the stream was found in place after an event was not
	// kept (a store limit, say): more such events are not logged before.
	quietUntil time.Time
	// unkept are the events to send again, oldest first (at most
	// MaxPending); inflight, those sent again whose acknowledgement is
	// awaited, by message; givenUp counts events not kept since it was
	// last said (resend.go).
	unkept   []*unkept
	inflight map[*nats.Msg]*unkept
	givenUp  int
	saidAt   time.Time
}

// ErrNoJetStream is returned (wrapped) by NewPublisher's stream set-up when
// the server has no JetStream; the publisher still works, core only.
var ErrNoJetStream = errors.New("JetStream is not available")

// noJetStream tells an error that says the servers have no JetStream (for
// this account) from one that says it cannot answer now.
func noJetStream(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)
}

// ackTimeout is how long the stream may take to acknowledge an event
// before it is looked for (Check).
const ackTimeout = 2 * time.Second

// NewPublisher prepares a publisher. With opts.JetStream it creates the
// stream, or updates it where its configuration differs. Where the servers
// have no JetStream the publisher falls back to core publish and the error
// (ErrNoJetStream) says why, for the caller to log once. Where JetStream
// answers but cannot set the stream up yet (a cluster just formed, a
// leader being elected), the publisher keeps JetStream and treats the
// stream as lost: events reach core subscribers meanwhile, and Check
// creates the stream once it can. (It used to fall back to core publish
// for good, and a worker went on without its node's lease.)
func NewPublisher(ctx context.Context, nc *nats.Conn, opts Options) (*Publisher, error) {
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxPerSubject == 0 {
		opts.MaxPerSubject = DefaultMaxPerSubject
	}
	if opts.MaxAge == 0 {
		opts.MaxAge = 24 * time.Hour
	}
	if opts.MaxPending == 0 {
		opts.MaxPending = 256
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	p := &Publisher{nc: nc, opts: opts, inflight: map[*nats.Msg]*unkept{}}
	if !opts.JetStream {
		return p, nil
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(opts.MaxPending),
		jetstream.WithPublishAsyncTimeout(ackTimeout),
		jetstream.WithPublishAsyncErrHandler(p.notKept))
	if err != nil {
		return p, fmt.Errorf("%w: %v", ErrNoJetStream, err)
	}
	_, err = p.ensureStream(ctx, js)
	if err != nil && noJetStream(err) {
		return p, fmt.Errorf("%w: %v", ErrNoJetStream, err)
	}
	p.js = js
	if err != nil {
		p.lost = true
		p.opts.Logf("the event stream %s cannot be set up yet, tried again every second: %v", StreamName, err)
	}
	return p, nil
}

// StreamConfig is the stream the publisher keeps events in.
func (p *Publisher) StreamConfig() jetstream.StreamConfig {
	replicas := p.opts.Replicas
	if replicas == 0 {
		replicas = min(3, max(1, len(p.nc.Servers())))
	}
	return jetstream.StreamConfig{
		Name:              StreamName,
		Description:       "memworker pressure and allocation events",
		Subjects:          []string{subjects.AllPressureEvents, subjects.AllAllocationEvents},
		MaxAge:            p.opts.MaxAge,
		MaxBytes:          p.opts.MaxBytes,
		MaxMsgsPerSubject: p.opts.MaxPerSubject,
		Discard:           jetstream.DiscardOld,
		Duplicates:        duplicateWindow,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
	}
}

// ensureStream creates the stream, or updates it when its configuration
// differs from StreamConfig's.
func (p *Publisher) ensureStream(ctx context.Context, js jetstream.JetStream) (created bool, err error) {
	want := p.StreamConfig()
	s, err := js.Stream(ctx, StreamName)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		_, err = js.CreateStream(ctx, want)
		created = err == nil
	case err != nil:
	default:
		have := s.CachedInfo().Config
		if have.MaxAge != want.MaxAge || have.Replicas != want.Replicas || have.Duplicates != want.Duplicates ||
			have.MaxBytes != want.MaxBytes || have.MaxMsgsPerSubject != want.MaxMsgsPerSubject || have.Discard != want.Discard ||
			!slices.Equal(have.Subjects, want.Subjects) {
			_, err = js.UpdateStream(ctx, want)
		}
	}
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", StreamName, err)
	}
	return created, nil
}

// Check creates the stream again when an event was not acknowledged since
// the last check and the stream is gone (deleted, or a server restarted
// with an empty store), and sends again the events not acknowledged that
// are due (resend.go). The caller calls it now and then (the worker's
// event pump, every second).
func (p *Publisher) Check(ctx context.Context) {
	if p.js == nil {
		return
	}
	p.mu.Lock()
	lost, queued := p.lost, len(p.unkept)+len(p.inflight) > 0
	p.mu.Unlock()
	if lost {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		created, err := p.ensureStream(cctx, p.js)
		cancel()
		if err != nil {
			// Tried every second: said once a minute at most.
			p.mu.Lock()
			say := time.Now().After(p.quietUntil)
			if say {
				p.quietUntil = time.Now().Add(time.Minute)
			}
			p.mu.Unlock()
			if say {
				p.opts.Logf("the event stream %s cannot be created (tried again every second): %v", StreamName, err)
			}
			return
		}
		p.mu.Lock()
		p.lost = false
		if !created {
			// It was there all along: events were refused (a store limit), not
			// lost with the stream. Say so once a minute at most.
			p.quietUntil = time.Now().Add(time.Minute)
		}
		p.mu.Unlock()
		if created {
			p.opts.Logf("the event stream %s is in place again", StreamName)
		}
	}
	if queued {
		p.resend(time.Now())
	}
	p.sayGivenUp(false)
}

// Close waits, at most until ctx is done, for the stream to acknowledge
// the events published to it.
func (p *Publisher) Close(ctx context.Context) {
	if p.js == nil {
		return
	}
	select {
	case <-p.js.PublishAsyncComplete():
	case <-ctx.Done():
	}
	p.mu.Lock()
	p.givenUp += len(p.unkept)
	p.unkept = nil
	p.mu.Unlock()
	p.sayGivenUp(true)
}

// JetStream reports whether events are kept in the stream.
func (p *Publisher) JetStream() bool { return p.js != nil }

// New builds and validates the CloudEvent for data.
func New(data Pressure) (event.Event, error) {
	return build(TypePressure, Source(data.Node, data.DeviceID), data.DeviceID, data.ObservedAt, data)
}

// build makes a validated CloudEvent with a fresh id and JSON data.
func build(typ, source, subject string, at time.Time, data any) (event.Event, error) {
	e := event.New(event.CloudEventsVersionV1)
	e.SetID(uuid.NewString())
	e.SetType(typ)
	e.SetSource(source)
	e.SetSubject(subject)
	e.SetTime(at)
	if err := e.SetData(ContentTypeJSON, data); err != nil {
		return e, err
	}
	return e, e.Validate()
}

// Publish sends the event for data on memory.pressure.<device_id>; with
// JetStream the stream stores it too, acknowledged in the background (see
// Publisher).
func (p *Publisher) Publish(ctx context.Context, data Pressure) (event.Event, error) {
	e, err := New(data)
	if err != nil {
		return e, fmt.Errorf("building pressure event: %w", err)
	}
	msg, err := p.message(e)
	if err != nil {
		return e, err
	}
	if err := p.send(ctx, msg, e.ID()); err != nil {
		return e, fmt.Errorf("publishing pressure event for %s: %w", data.DeviceID, err)
	}
	return e, nil
}

// send publishes an event message: to the stream when there is one, which
// reaches core subscribers as any publish does, else on core NATS.
func (p *Publisher) send(_ context.Context, msg *nats.Msg, id string) error {
	if p.js != nil {
		// A JetStream publish is a core publish with a reply subject for
		// the ack: subscribers get it as soon as any other.
		_, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(id), jetstream.WithStallWait(50*time.Millisecond))
		if err == nil {
			return nil
		}
		p.opts.Logf("event on %s not kept: %v", msg.Subject, err)
	}
	msg.Reply = ""
	return p.nc.PublishMsg(msg)
}

func (p *Publisher) message(e event.Event) (*nats.Msg, error) {
	msg := nats.NewMsg(subjects.PressureEvents(e.Subject()))
	if !p.opts.Binary {
		body, err := json.Marshal(e)
		if err != nil {
			return nil, err
		}
		msg.Header.Set("Content-Type", ContentTypeStructured)
		msg.Data = body
		return msg, nil
	}
	msg.Header.Set("Content-Type", e.DataContentType())
	msg.Header.Set("ce-specversion", e.SpecVersion())
	msg.Header.Set("ce-id", e.ID())
	msg.Header.Set("ce-type", e.Type())
	msg.Header.Set("ce-source", e.Source())
	msg.Header.Set("ce-subject", e.Subject())
	msg.Header.Set("ce-time", e.Time().UTC().Format(time.RFC3339Nano))
	msg.Data = e.Data()
	return msg, nil
}

// Decode reads a pressure event from a NATS message in either mode, with
// the sdk's own decoding and validation.
func Decode(msg *nats.Msg) (event.Event, Pressure, error) {
	var data Pressure
	e, err := decodeEvent(msg)
	if err != nil {
		return e, data, err
	}
	if e.Type() != TypePressure {
		return e, data, fmt.Errorf("event type %q is not %s", e.Type(), TypePressure)
	}
	if err := e.DataAs(&data); err != nil {
		return e, data, fmt.Errorf("decoding pressure data: %w", err)
	}
	return e, data, nil
}

// decodeEvent reads a CloudEvent from a NATS message in either mode and
// validates it.
func decodeEvent(msg *nats.Msg) (event.Event, error) {
	var e event.Event
	if id := msg.Header.Get("ce-id"); id != "" {
		e = event.New(msg.Header.Get("ce-specversion"))
		e.SetID(id)
		e.SetType(msg.Header.Get("ce-type"))
		e.SetSource(msg.Header.Get("ce-source"))
		e.SetSubject(msg.Header.Get("ce-subject"))
		if t, err := time.Parse(time.RFC3339Nano, msg.Header.Get("ce-time")); err == nil {
			e.SetTime(t)
		}
		e.SetDataContentType(msg.Header.Get("Content-Type"))
		e.DataEncoded = msg.Data
	} else if err := json.Unmarshal(msg.Data, &e); err != nil {
		return e, fmt.Errorf("decoding structured CloudEvent: %w", err)
	}
	return e, e.Validate()
}
