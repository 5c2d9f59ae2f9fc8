package main

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/internal/natstest"
	"github.com/memworker/memworker/subjects"
)

// TestAnIDNoNodeSeemedToHoldIsAskedAgainOnlyAfterAGrace: a fleet gather
// that ended on the leases' grace may have missed a node without a lease,
// so an id no node seemed to hold is asked of the whole fleet again before
// memctl says ALLOCATION_NOT_FOUND; a gather that waited out its stall is
// not asked twice.
func TestAnIDNoNodeSeemedToHoldIsAskedAgainOnlyAfterAGrace(t *testing.T) {
	const id = "0193a4b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b"
	for _, tc := range []struct {
		name   string
		leases bool   // a lease bucket naming the node "leased"
		holder string // the node holding id, "" none
		asks   int32  // fleet lookups each node saw (0: one or two)
		found  bool
	}{
		// (A busy machine may stretch the grace past late's answer.)
		{"held by a late node without a lease", true, "late", 0, true},
		{"held by nobody, leases", true, "", 2, false},
		{"held by nobody, no leases", false, "", 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.JetStream(t)
			nc := natstest.Connect(t, srv)
			ctx := context.Background()
			if tc.leases {
				js, err := jetstream.New(nc)
				if err != nil {
					t.Fatal(err)
				}
				kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: subjects.NodeLeaseBucket, TTL: time.Minute})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := kv.Put(ctx, "leased", []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			// leased answers at once; late well after the grace and
			// within memctl's stall.
			delays := map[string]time.Duration{"leased": 0, "late": 60 * time.Millisecond}
			var asks atomic.Int32
			for node, delay := range delays {
				rc := natstest.Connect(t, srv)
				_, err := rc.Subscribe(subjects.FleetRequest(subjects.GetAllocations), func(m *nats.Msg) {
					if node == "leased" {
						asks.Add(1)
					}
					go func() {
						time.Sleep(delay)
						var held []subjects.Allocation
						if node == tc.holder {
							held = []subjects.Allocation{{AllocationID: id}}
						}
						page, _ := json.Marshal(subjects.AllocationsReply{Allocations: held})
						data, _ := json.Marshal(subjects.FleetReply{Node: node, Instance: node, Devices: []subjects.FleetDevice{{DeviceID: node + "-gpu0", Success: true, Data: page}}})
						body, _ := json.Marshal(map[string]any{"success": true, "data": json.RawMessage(data)})
						m.Respond(body)
					}()
				})
				if err != nil {
					t.Fatal(err)
				}
				if err := rc.Flush(); err != nil { // the server has the subscription
					t.Fatal(err)
				}
			}
			e := &env{ctx: ctx, cli: &cli{}, nc: nc, client: client.New(nc), ids: loadIDCache(t.TempDir())}
			got, err := e.devicesOf([]string{id})
			switch {
			case tc.found && (err != nil || len(got) != 1 || len(got["late-gpu0"]) != 1):
				t.Errorf("devicesOf = %v, %v; want late-gpu0 holding %s", got, err, id)
			case !tc.found && (err == nil || !strings.Contains(err.Error(), "ALLOCATION_NOT_FOUND")):
				t.Errorf("devicesOf = %v, %v; want ALLOCATION_NOT_FOUND", got, err)
			}
			if n := asks.Load(); n != tc.asks && (tc.asks != 0 || n > 2) {
				t.Errorf("the fleet was asked %d times, want %d", n, tc.asks)
			}
		})
	}
}
