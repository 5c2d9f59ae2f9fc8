package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// Options tune a Publisher.
type Options struct {
	// Binary sends data as the body and attributes as ce- headers instead
	// of one structured JSON document.
	Binary bool
	// JetStream keeps events in StreamName when the server has JetStream.
	JetStream bool
	// MaxAge bounds how long the stream keeps events (default 24 h).
	MaxAge time.Duration
}

// Publisher sends pressure events on one connection.
type Publisher struct {
	nc   *nats.Conn
	js   jetstream.JetStream // nil: core publish only
	opts Options
}

// ErrNoJetStream is returned (wrapped) by NewPublisher's stream set-up when
// the server has no JetStream; the publisher still works, core only.
var ErrNoJetStream = errors.New("JetStream is not available")

// NewPublisher prepares a publisher. With opts.JetStream it creates or
// updates the stream; when that fails the publisher falls back to core
// publish and the error says why (the caller logs it once).
func NewPublisher(ctx context.Context, nc *nats.Conn, opts Options) (*Publisher, error) {
	if opts.MaxAge == 0 {
		opts.MaxAge = 24 * time.Hour
	}
	p := &Publisher{nc: nc, opts: opts}
	if !opts.JetStream {
		return p, nil
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return p, fmt.Errorf("%w: %v", ErrNoJetStream, err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "memworker pressure events",
		Subjects:    []string{subjects.AllPressureEvents},
		MaxAge:      opts.MaxAge,
		Duplicates:  2 * time.Minute,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return p, fmt.Errorf("%w: creating stream %s: %v", ErrNoJetStream, StreamName, err)
	}
	p.js = js
	return p, nil
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

// Publish sends the event for data on memory.pressure.<device_id> and, with
// JetStream, waits for the stream to store it.
func (p *Publisher) Publish(ctx context.Context, data Pressure) (event.Event, error) {
	e, err := New(data)
	if err != nil {
		return e, fmt.Errorf("building pressure event: %w", err)
	}
	msg, err := p.message(e)
	if err != nil {
		return e, err
	}
	if p.js != nil {
		_, err = p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(e.ID()))
	} else {
		err = p.nc.PublishMsg(msg)
	}
	if err != nil {
		return e, fmt.Errorf("publishing pressure event for %s: %w", data.DeviceID, err)
	}
	return e, nil
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
	var e event.Event
	var data Pressure
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
		return e, data, fmt.Errorf("decoding structured CloudEvent: %w", err)
	}
	if err := e.Validate(); err != nil {
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
