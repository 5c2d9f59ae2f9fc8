package main

import (
	"context"
	"encoding/json"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/subjects"
)

// TestAnIDOnANodeWithoutALeaseIsFound: a fleet gather may end before a
// node without a lease answers (the leased ones all did), so an id no
// node seemed to hold is asked of the whole fleet again before memctl
// says ALLOCATION_NOT_FOUND.
func TestAnIDOnANodeWithoutALeaseIsFound(t *testing.T) {
	srv := natstest.JetStream(t)
	nc := natstest.Connect(t, srv)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: subjects.NodeLeaseBucket, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "leased", []byte("x")); err != nil {
		t.Fatal(err)
	}
	const id = "0193a4b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b"
	// leased holds nothing and answers at once; late holds the id and
	// answers well after the grace (and within memctl's stall).
	holds := map[string][]subjects.Allocation{"leased": nil, "late": {{AllocationID: id}}}
	delays := map[string]time.Duration{"leased": 0, "late": 60 * time.Millisecond}
	for _, node := range []string{"leased", "late"} {
		_, err := natstest.Connect(t, srv).Subscribe(subjects.FleetRequest(subjects.GetAllocations), func(m *nats.Msg) {
			go func() {
				time.Sleep(delays[node])
				page, _ := json.Marshal(subjects.AllocationsReply{Allocations: holds[node]})
				data, _ := json.Marshal(subjects.FleetReply{Node: node, Instance: node, Devices: []subjects.FleetDevice{{DeviceID: node + "-gpu0", Success: true, Data: page}}})
				body, _ := json.Marshal(map[string]any{"success": true, "data": json.RawMessage(data)})
				m.Respond(body)
			}()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	e := &env{ctx: ctx, cli: &cli{}, nc: nc, client: client.New(nc), ids: loadIDCache(t.TempDir())}
	got, err := e.devicesOf([]string{id})
	if want := map[string][]string{"late-gpu0": {id}}; err != nil || !maps.EqualFunc(got, want, func(a, b []string) bool { return len(a) == 1 && a[0] == b[0] }) || len(got) != 1 {
		t.Errorf("devicesOf = %v, %v; want %v", got, err, want)
	}
}
