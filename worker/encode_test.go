package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/memworker/memworker/internal/replycache"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// TestReplyEncodingMatchesEncodingJSON guards the faster encoder: for
// every reply type, filled with awkward values, the reply writer must write
// exactly the envelope encoding/json writes.
func TestReplyEncodingMatchesEncodingJSON(t *testing.T) {
	now := time.Date(2026, 11, 25, 17, 30, 1, 123456789, time.UTC)
	rw := newReplyWriter()
	// Plain ids take the writer's fast path; the others the encoder.
	for _, id := range []string{"qjtOZFgblPmHINXvIPDGTn", "0193f4a2-7c1e-7d3a-9f00-1b2c3d4e5f60", "a b~", "", "é", "a\tb", `a"b`, "\x7f"} {
		got, err := rw.success(id, 1, nil, now, nil)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(subjects.Reply{Success: true, RequestID: id, Timestamp: now, Data: json.RawMessage(`1`)})
		if string(got) != string(want) {
			t.Errorf("request id %q:\n got %s\nwant %s", id, got, want)
		}
	}
	// Each reply: encoded afresh; then through a kept encoding, the first
	// time, again, and a nanosecond later, when its times at now have moved
	// with it (the kept encoding with the new now written in).
	kept := keptCaches()[subjects.GetStatus]
	for i := range awkwardReplies(now) {
		for _, tc := range []struct {
			name string
			at   time.Time
			kept *replycache.Cache
		}{{"afresh", now, nil}, {"first kept", now, kept}, {"kept again", now, kept}, {"kept, later", now.Add(time.Nanosecond), kept}} {
			r := awkwardReplies(tc.at)[i]
			ptr := reflect.New(reflect.TypeOf(r)) // as the ops return them
			ptr.Elem().Set(reflect.ValueOf(r))
			odd := oddString
			data, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			want, err := json.Marshal(subjects.Reply{Success: true, RequestID: odd, Timestamp: tc.at, Data: data})
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "kept again" { // the kept encoding is there, and is what is sent
				at := tc.at.UTC()
				if k, ok := replycache.Fingerprint(new(replycache.Scratch), ptr.Interface(), at, at.AppendFormat(nil, time.RFC3339Nano)); ok && tc.kept.WriteTo(new(bytes.Buffer), k) == nil {
					t.Errorf("%T: encoded again, not kept", r)
				}
			}
			got, err := rw.success(odd, ptr.Interface(), nil, tc.at, tc.kept)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("%T, %s:\n got %s\nwant %s", r, tc.name, got, want)
			}
		}
	}
}

// oddString needs escaping every way JSON allows.
const oddString = `<script>&"quoted"\ ü 😀 ` + "\u2028"

// awkwardReplies is every reply type, filled with awkward values, its
// times at now and near it.
func awkwardReplies(now time.Time) []any {
	odd := oddString
	exp := now.Add(time.Hour)
	alloc := subjects.Allocation{AllocationID: odd, DeviceID: "n-gpu0", SizeBytes: 1 << 40, Purpose: odd, CreatedAt: now, ExpiresAt: &exp, LastUsedAt: now, IPCHandle: "aGk="}
	replies := []any{
		alloc,
		subjects.StatusReply{Allocations: []subjects.Allocation{alloc}, UsageStats: &subjects.PoolStats{CacheHitRatio: 0.3333333333333333}, Fragmentation: &subjects.Fragmentation{FragmentationRatio: 1e-9}},
		subjects.Usage{UsageRatio: 0.1 + 0.2, ByPurpose: []subjects.PurposeUsage{{Purpose: odd}}, Processes: []subjects.ProcessUsage{{PID: 1}}, SampledAt: now},
		subjects.AllocationsReply{Allocations: []subjects.Allocation{}, NextCursor: odd},
		subjects.DeallocateReply{DeallocatedIDs: []string{odd}},
		subjects.ClearReply{ClearedBytes: -1},
		subjects.Pressure{PressureFigures: subjects.PressureFigures{Level: subjects.LevelCritical, UsageRatio: 1}, ChangedAt: now, SampledAt: now},
		subjects.DefragmentReply{DurationSeconds: 1e-7},
		subjects.TransferStatus{StartedAt: &now, ThroughputBytesPerSecond: 1.5e12, ErrorMessage: odd},
		subjects.OptimizeReply{Actions: []subjects.OptimizeAction{{Description: odd}}},
		subjects.ModelStatusReply{Models: []subjects.ModelMemory{{ModelID: odd, LastUsedAt: now}}},
		subjects.ModelOptimizeReply{OptimizationStarted: now, OptimizationDetails: subjects.OptimizationDetails{Models: []subjects.ModelAction{{AllocationIDs: nil}}}},
		subjects.AnalyticsReply{Samples: []subjects.Sample{{At: now, UsageRatio: 2.0 / 3}}, SizeHistogram: []subjects.SizeBucket{{LeBytes: subjects.MaxSizeBytes}}},
		subjects.OptimizationRecsReply{Recommendations: []subjects.Recommendation{{SuggestedAction: subjects.SuggestedAction{Op: subjects.Optimize, Data: map[string]any{"strategies": []string{"a"}, "idle_seconds": 300.0, "b": odd}}}}},
		subjects.FleetReply{Devices: []subjects.FleetDevice{{Data: json.RawMessage(`{"a": 1}`)}}},
	}
	return replies
}

// TestAnUnchangedDeviceIsNotEncodedAgain: statuses, usages and pressures
// of a device polled again before its next driver reading say the same
// thing but for the moment, so they take the kept encoding; an allocation
// between them changes what they say, and they are encoded afresh.
func TestAnUnchangedDeviceIsNotEncodedAgain(t *testing.T) {
	w, _ := testWorker(t, "n", func(c *Config) { c.TruthMaxAge = time.Hour })
	g := w.gpus[0]
	ops := w.ops()
	key := func(op subjects.Op, now time.Time) []byte {
		g.mu.Lock()
		v, err := ops[op](context.Background(), g, ledger.Call{Now: now}, nil)
		g.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		k, ok := replycache.Fingerprint(new(replycache.Scratch), v, now.UTC(), now.UTC().AppendFormat(nil, time.RFC3339Nano))
		if !ok {
			t.Fatalf("%s: %T has no fingerprint", op, v)
		}
		return bytes.Clone(k.Bytes())
	}
	for _, op := range keptReplies {
		now := time.Now()
		key(op, now.Add(-time.Microsecond)) // reads telemetry, first sees the pressure: at that now
		first := key(op, now)
		if again := key(op, now.Add(10*time.Microsecond)); !bytes.Equal(first, again) {
			t.Errorf("%s: polled again 10 µs later, the reply is not the kept one", op)
		}
		g.mu.Lock()
		_, err := ops[subjects.Allocate](context.Background(), g, ledger.Call{Now: now}, []byte(`{"size_bytes":1048576}`))
		g.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if after := key(op, now.Add(20*time.Microsecond)); bytes.Equal(first, after) {
			t.Errorf("%s: after an allocation, the kept reply would be sent", op)
		}
	}
}

// TestKeptRepliesAreEachCallersOwn: the operator and two tenants poll the
// kept reads in turn, with and without their allocations listed. Each
// reply, kept or not, shows only what its caller may see: a tenant's
// purposes and allocations are its own, the operator's are everybody's.
func TestKeptRepliesAreEachCallersOwn(t *testing.T) {
	w, _ := testWorker(t, "n", func(c *Config) { c.TruthMaxAge = time.Hour })
	as := func(tenant string, op subjects.Op, body string) []byte {
		t.Helper()
		return call(t, w, tenant, op, body)
	}
	for _, tenant := range []string{"a", "b"} {
		as(tenant, subjects.Allocate, `{"data":{"size_bytes":1048576,"purpose":"p-`+tenant+`"}}`)
	}
	as("", subjects.Allocate, `{"data":{"size_bytes":1048576,"purpose":"p-operator"}}`)
	sees := map[string][]string{"": {"p-a", "p-b", "p-operator"}, "a": {"p-a"}, "b": {"p-b"}}
	for round := range 3 {
		for _, tenant := range []string{"", "a", "b"} {
			for _, body := range []string{`{}`, `{"data":{"include_allocations":true}}`} {
				var reply struct {
					Data struct {
						Usage struct {
							ByPurpose []subjects.PurposeUsage `json:"by_purpose"`
						} `json:"usage"`
						AllocationCount int                   `json:"allocation_count"`
						Allocations     []subjects.Allocation `json:"allocations"`
					} `json:"data"`
				}
				if err := json.Unmarshal(as(tenant, subjects.GetStatus, body), &reply); err != nil {
					t.Fatal(err)
				}
				var purposes []string
				for _, p := range reply.Data.Usage.ByPurpose {
					purposes = append(purposes, p.Purpose)
				}
				if !slices.Equal(purposes, sees[tenant]) || reply.Data.AllocationCount != len(sees[tenant]) {
					t.Errorf("round %d, get_status %s as %q: purposes %v, %d allocations; want %v", round, body, tenant, purposes, reply.Data.AllocationCount, sees[tenant])
				}
				for _, a := range reply.Data.Allocations {
					if !slices.Contains(sees[tenant], a.Purpose) {
						t.Errorf("round %d, get_status as %q lists %s's allocation", round, tenant, a.Purpose)
					}
				}
				var usage struct {
					Data struct {
						ByPurpose []subjects.PurposeUsage `json:"by_purpose"`
					} `json:"data"`
				}
				if err := json.Unmarshal(as(tenant, subjects.GetUsage, `{}`), &usage); err != nil {
					t.Fatal(err)
				}
				if len(usage.Data.ByPurpose) != len(sees[tenant]) {
					t.Errorf("round %d, get_usage as %q: purposes %+v, want %v", round, tenant, usage.Data.ByPurpose, sees[tenant])
				}
			}
		}
	}
}
