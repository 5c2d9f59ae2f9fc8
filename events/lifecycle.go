package events

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
)

// Lifecycle event types: a worker started serving a node's devices, or
// stopped (its allocations were freed with its process).
const (
	TypeWorkerStarted = "io.memworker.worker.started.v1"
	TypeWorkerStopped = "io.memworker.worker.stopped.v1"
)

// Lifecycle is the data of a lifecycle event.
type Lifecycle struct {
	Node     string    `json:"node"`
	Instance string    `json:"instance"`
	Host     string    `json:"host"`
	Standby  bool      `json:"standby"`
	Devices  []string  `json:"devices"`
	At       time.Time `json:"at"`
	// GoneInstance, in a started event, is the instance that served the
	// node before and stopped without a stopped event (killed, or its host
	// lost): its allocation ids are void.
	GoneInstance string `json:"gone_instance,omitempty"`
}

// PublishLifecycle sends a lifecycle event of type typ on
// memory.lifecycle.<node> (core NATS: it is news for those listening now).
func (p *Publisher) PublishLifecycle(typ string, data Lifecycle) error {
	e, err := build(typ, "/memworker/"+data.Node+"/"+data.Instance, data.Node, data.At, data)
	if err != nil {
		return err
	}
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(subjects.LifecycleEvents(data.Node))
	msg.Header.Set("Content-Type", ContentTypeStructured)
	msg.Data = body
	if err := p.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publishing %s: %w", typ, err)
	}
	return p.nc.FlushTimeout(2 * time.Second)
}

// DecodeLifecycle reads a lifecycle event.
func DecodeLifecycle(msg *nats.Msg) (event.Event, Lifecycle, error) {
	var e event.Event
	var data Lifecycle
	if err := json.Unmarshal(msg.Data, &e); err != nil {
		return e, data, err
	}
	if err := e.Validate(); err != nil {
		return e, data, err
	}
	err := e.DataAs(&data)
	return e, data, err
}
