package events_test

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
)

// Watch a device's pressure: subscribe to its event subject and decode each
// CloudEvent (structured or binary mode alike).
func ExampleDecode() {
	srv, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	srv.Start()
	defer srv.Shutdown()
	srv.ReadyForConnections(5 * time.Second)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()

	sub, _ := nc.SubscribeSync(subjects.PressureEvents("node1-gpu0"))
	// A worker publishes; here a publisher stands in for it.
	pub, _ := events.NewPublisher(context.Background(), nc, events.Options{})
	_, err = pub.Publish(context.Background(), events.Pressure{
		PressureFigures: subjects.PressureFigures{DeviceID: "node1-gpu0",
			Level: subjects.LevelWarning, PreviousLevel: subjects.LevelNormal, UsageRatio: 0.9,
			UsedBytes: 90, FreeBytes: 10, TotalBytes: 100, WarningThreshold: 0.85, CriticalThreshold: 0.95},
		Node: "node1", Reason: events.ReasonChanged, TopConsumers: []subjects.Consumer{}, ObservedAt: time.Now(),
	})
	if err != nil {
		panic(err)
	}

	msg, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		panic(err)
	}
	e, p, err := events.Decode(msg)
	fmt.Println(e.Type(), e.Subject(), err)
	fmt.Println(p.PreviousLevel, "->", p.Level, p.UsageRatio)
	// Output:
	// io.memworker.memory.pressure.v1 node1-gpu0 <nil>
	// normal -> warning 0.9
}
