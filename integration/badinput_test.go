package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// TestBadInputChangesNothing sends hostile requests; each gets its documented
// error, with a JSON body and micro's headers, and the ledger is unchanged.
func TestBadInputChangesNothing(t *testing.T) {
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(2, 4*GiB))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	var keep subjects.Allocation
	call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, Purpose: "keep"}, &keep)

	long := strings.Repeat("x", 300)
	deep := strings.Repeat(`{"a":`, 200) + "1" + strings.Repeat("}", 200)
	tests := []struct {
		name string
		op   subjects.Op
		body string
		code subjects.Code
	}{
		{"malformed JSON", subjects.Allocate, `{"data":{"size_bytes":1024`, subjects.CodeInvalidRequest},
		{"truncated", subjects.Allocate, `{"data":`, subjects.CodeInvalidRequest},
		{"not an object", subjects.Allocate, `[1,2,3]`, subjects.CodeInvalidRequest},
		{"binary garbage", subjects.Allocate, "\x00\xff\xfe garbage", subjects.CodeInvalidRequest},
		{"trailing data", subjects.Allocate, `{"data":{"size_bytes":1024}} {}`, subjects.CodeInvalidRequest},
		{"a NUL after the JSON", subjects.Allocate, "{\"data\":{\"size_bytes\":1024}}\x00", subjects.CodeInvalidRequest},
		{"a type that only Unicode folding matches", subjects.Allocate, `{"data":{"size_bytes":1024,"allocation_type":"pınned"}}`, subjects.CodeInvalidRequest},
		{"a bidi override in model_id", subjects.Allocate, "{\"data\":{\"size_bytes\":1024,\"model_id\":\"ab\u202ecd\"}}", subjects.CodeInvalidRequest},
		{"a zero-width space in purpose", subjects.Allocate, "{\"data\":{\"size_bytes\":1024,\"purpose\":\"kv\u200b\"}}", subjects.CodeInvalidRequest},
		{"a lone surrogate escape in purpose", subjects.Allocate, `{"data":{"size_bytes":1024,"purpose":"kv\ud800"}}`, subjects.CodeInvalidRequest},
		{"a mode that only Unicode folding matches", subjects.Transfer, `{"data":{"allocation_id":"x","mode":"COPYİ"}}`, subjects.CodeInvalidRequest},
		{"ttl under a millisecond", subjects.Allocate, `{"data":{"size_bytes":1024,"ttl_seconds":1e-300}}`, subjects.CodeInvalidRequest},
		{"size as string", subjects.Allocate, `{"data":{"size_bytes":"1024"}}`, subjects.CodeInvalidRequest},
		{"size as float", subjects.Allocate, `{"data":{"size_bytes":1.5}}`, subjects.CodeInvalidRequest},
		{"size missing", subjects.Allocate, `{"data":{}}`, subjects.CodeInvalidRequest},
		{"empty body", subjects.Allocate, ``, subjects.CodeInvalidRequest},
		{"zero size", subjects.Allocate, `{"data":{"size_bytes":0}}`, subjects.CodeInvalidRequest},
		{"negative size", subjects.Allocate, `{"data":{"size_bytes":-1}}`, subjects.CodeInvalidRequest},
		{"huge number", subjects.Allocate, `{"data":{"size_bytes":99999999999999999999999}}`, subjects.CodeInvalidRequest},
		{"size over capacity", subjects.Allocate, `{"data":{"size_bytes":5368709120}}`, subjects.CodeOutOfMemory},
		{"size beyond any device", subjects.Allocate, `{"data":{"size_bytes":4611686018427387904}}`, subjects.CodeInvalidRequest},
		{"alignment not a power of two", subjects.Allocate, `{"data":{"size_bytes":1024,"alignment":1000}}`, subjects.CodeInvalidRequest},
		{"alignment too large", subjects.Allocate, `{"data":{"size_bytes":1024,"alignment":1073741824}}`, subjects.CodeInvalidRequest},
		{"negative alignment", subjects.Allocate, `{"data":{"size_bytes":1024,"alignment":-4096}}`, subjects.CodeInvalidRequest},
		{"unknown allocation type", subjects.Allocate, `{"data":{"size_bytes":1024,"allocation_type":"INVALID"}}`, subjects.CodeInvalidRequest},
		{"negative ttl", subjects.Allocate, `{"data":{"size_bytes":1024,"ttl_seconds":-5}}`, subjects.CodeInvalidRequest},
		{"a pid past Linux's largest", subjects.Allocate, `{"data":{"size_bytes":1024,"allocation_type":"RESERVATION","pid":4194305}}`, subjects.CodeInvalidRequest},
		{"an analytics window under a second", subjects.Analytics, `{"data":{"window_seconds":1e-9}}`, subjects.CodeInvalidRequest},
		{"over-long purpose", subjects.Allocate, `{"data":{"size_bytes":1024,"purpose":"` + long + `"}}`, subjects.CodeInvalidRequest},
		{"control characters in model_id", subjects.Allocate, `{"data":{"size_bytes":1024,"model_id":"a\u0000b"}}`, subjects.CodeInvalidRequest},
		{"unknown field", subjects.Allocate, `{"data":{"size_bytes":1024,"sise":1}}`, subjects.CodeInvalidRequest},
		{"unknown envelope field", subjects.Allocate, `{"data":{"size_bytes":1024},"extra":1}`, subjects.CodeInvalidRequest},
		{"duplicate key spellings", subjects.Allocate, `{"data":{"size_bytes":1024,"SizeBytes":2048}}`, subjects.CodeInvalidRequest},
		{"the same key twice", subjects.Allocate, `{"data":{"device_id":"COPY","device_id":"n1-gpu0","size_bytes":1024}}`, subjects.CodeInvalidRequest},
		{"a key folded to a field", subjects.Allocate, `{"data":{"ſize_bytes":1024}}`, subjects.CodeInvalidRequest},
		{"a key in upper snake case", subjects.Allocate, `{"data":{"SIZE_BYTES":1024}}`, subjects.CodeInvalidRequest},
		{"control character in request id", subjects.Allocate, `{"request_id":"a\u0001","data":{"size_bytes":1024}}`, subjects.CodeInvalidRequest},
		{"deeply nested", subjects.Allocate, `{"data":` + deep + `}`, subjects.CodeInvalidRequest},
		{"device contradicts subject", subjects.Allocate, `{"data":{"device_id":"n1-gpu1","size_bytes":1024}}`, subjects.CodeInvalidRequest},
		{"unknown action", subjects.Allocate, `{"action":"memory.explode","data":{"size_bytes":1024}}`, subjects.CodeUnknownAction},
		{"action of another op", subjects.Allocate, `{"action":"memory.clear","data":{"size_bytes":1024}}`, subjects.CodeInvalidRequest},
		{"over-long request id", subjects.Allocate, `{"request_id":"` + long + `","data":{"size_bytes":1024}}`, subjects.CodeInvalidRequest},
		{"unknown allocation", subjects.Deallocate, `{"data":{"allocation_id":"nope"}}`, subjects.CodeAllocationNotFound},
		{"one unknown among known", subjects.Deallocate, `{"data":{"allocation_ids":["` + keep.AllocationID + `","nope"]}}`, subjects.CodeAllocationNotFound},
		{"deallocate without id", subjects.Deallocate, `{"data":{}}`, subjects.CodeInvalidRequest},
		{"empty id in list", subjects.Deallocate, `{"data":{"allocation_ids":[""]}}`, subjects.CodeInvalidRequest},
		{"ids not strings", subjects.Deallocate, `{"data":{"allocation_ids":[1,2]}}`, subjects.CodeInvalidRequest},
		{"page limit too large", subjects.GetAllocations, `{"data":{"limit":100000}}`, subjects.CodeInvalidRequest},
		{"negative page limit", subjects.GetAllocations, `{"data":{"limit":-1}}`, subjects.CodeInvalidRequest},
		{"clear with bad type", subjects.Clear, `{"data":{"allocation_type":"DISK"}}`, subjects.CodeInvalidRequest},
		{"clear force as string", subjects.Clear, `{"data":{"force":"yes"}}`, subjects.CodeInvalidRequest},
		{"status flag as number", subjects.GetStatus, `{"data":{"include_allocations":1}}`, subjects.CodeInvalidRequest},
	}
	before := snapshot(t, nc, h, dev)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply := callErr(t, nc, tt.op, dev, []byte(tt.body), tt.code)
			if len(reply.ErrorMessage) > 500 {
				t.Errorf("error message of %d bytes: keep it short", len(reply.ErrorMessage))
			}
			if diff := cmp.Diff(before, snapshot(t, nc, h, dev)); diff != "" {
				t.Errorf("ledger changed (-before +after):\n%s", diff)
			}
		})
	}
	// A double free is refused the second time and frees nothing more.
	call(t, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: keep.AllocationID}, nil)
	after := snapshot(t, nc, h, dev)
	callErr(t, nc, subjects.Deallocate, dev, mustJSON(t, map[string]any{"data": map[string]string{"allocation_id": keep.AllocationID}}), subjects.CodeAllocationNotFound)
	if diff := cmp.Diff(after, snapshot(t, nc, h, dev)); diff != "" {
		t.Errorf("double free changed the ledger:\n%s", diff)
	}
}

// TestHugeInputGetsAShortReply: however long the input an error quotes,
// the reply and its headers stay short, every request is answered, and
// micro's stats keep answering.
func TestHugeInputGetsAShortReply(t *testing.T) {
	srv := startServer(t)
	startWorker(t, srv, "n1")
	nc := connect(t, srv)
	huge := strings.Repeat("x", 900_000)
	for body, code := range map[string]subjects.Code{
		`{"data":{"device_id":"` + huge + `"}}`: subjects.CodeInvalidRequest,
		`{"request_id":"` + huge + `"}`:         subjects.CodeInvalidRequest,
		`{"action":"` + huge + `"}`:             subjects.CodeUnknownAction,
		`{"data":{"` + huge + `":1}}`:           subjects.CodeInvalidRequest,
	} {
		reply := callErr(t, nc, subjects.GetPressure, "n1-gpu0", []byte(body), code)
		if len(reply.ErrorMessage) > subjects.MaxErrorMessage || len(reply.RequestID) > subjects.MaxRequestIDLen {
			t.Errorf("%.40s...: error message of %d bytes, request_id of %d", body, len(reply.ErrorMessage), len(reply.RequestID))
		}
	}
	msg := request(t, nc, subjects.GetPressure, "n1-gpu0", []byte(`{"data":{"device_id":"`+huge+`"}}`))
	if n := len(msg.Data) + len(msg.Header.Get("Nats-Service-Error")); n > 2*subjects.MaxErrorMessage+300 {
		t.Errorf("reply of %d bytes with its error header", n)
	}
	stats, _ := micro.ControlSubject(micro.StatsVerb, worker.ServiceName, "")
	if _, err := nc.Request(stats, nil, 5*time.Second); err != nil {
		t.Errorf("micro stats after huge errors: %v", err)
	}
}

type ledgerSnapshot struct {
	Usage       subjects.Usage
	Allocations []subjects.Allocation
}

func snapshot(t *testing.T, nc *nats.Conn, h *host, dev string) ledgerSnapshot {
	t.Helper()
	u := checkLedger(t, nc, h, dev, 0)
	u.SampledAt = time.Time{} // not part of the ledger
	var page subjects.AllocationsReply
	call(t, nc, subjects.GetAllocations, dev, subjects.AllocationsRequest{Limit: subjects.MaxPageLimit}, &page)
	return ledgerSnapshot{Usage: u, Allocations: page.Allocations}
}

// TestConcurrentClientsKeepTheLedgerExact runs many clients allocating,
// freeing and reading status on both devices at once, reads served by
// several handlers per device; every status is consistent in itself, and
// afterwards the ledger equals the backend.
func TestConcurrentClientsKeepTheLedgerExact(t *testing.T) {
	t.Parallel() // a server and worker of its own
	srv := startServer(t)
	h := startWorker(t, srv, "n1", withDevices(2, 2*GiB), withConfig(func(c *worker.Config) { c.ReadHandlers = 4 }))
	const clients, rounds = 16, 30
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := 0; c < clients; c++ {
		nc := connect(t, srv)
		dev := fmt.Sprintf("n1-gpu%d", c%2)
		wg.Go(func() {
			var mine []string
			for r := 0; r < rounds; r++ {
				body, _ := subjects.NewRequest(fmt.Sprintf("c%d-r%d", c, r), subjects.Allocate,
					subjects.AllocateRequest{SizeBytes: int64(1+(c*r)%7) * MiB / 3, Purpose: fmt.Sprint("p", c%3)})
				msg, err := nc.Request(subjects.Request(subjects.Allocate, dev), body, 5*time.Second)
				if err != nil {
					errs <- err
					return
				}
				var a subjects.Allocation
				if _, err := subjects.DecodeReply(msg.Data, &a); err != nil {
					errs <- err
					return
				}
				mine = append(mine, a.AllocationID)
				var st subjects.StatusReply
				if _, err := client.New(nc).Do(context.Background(), subjects.GetStatus, dev, subjects.StatusRequest{IncludeAllocations: true}, &st); err != nil {
					errs <- err
					return
				}
				if st.Device.DeviceID != dev || st.AllocationCount != st.Usage.Allocations || st.AllocationCount != len(st.Allocations) {
					errs <- fmt.Errorf("%s: status inconsistent in itself: count %d, usage %d, listed %d", dev, st.AllocationCount, st.Usage.Allocations, len(st.Allocations))
					return
				}
				if r%3 == 2 {
					body, _ := subjects.NewRequest("", subjects.Deallocate, subjects.DeallocateRequest{AllocationIDs: mine[:2]})
					msg, err := nc.Request(subjects.Request(subjects.Deallocate, dev), body, 5*time.Second)
					if err == nil {
						_, err = subjects.DecodeReply(msg.Data, nil)
					}
					if err != nil {
						errs <- err
						return
					}
					mine = mine[2:]
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	nc := connect(t, srv)
	info := serviceInfo(t, nc)
	handlers := map[string]int{}
	for _, e := range info.Endpoints {
		handlers[e.Subject]++
	}
	if n, m := handlers[subjects.Request(subjects.GetStatus, "n1-gpu0")], handlers[subjects.Request(subjects.Allocate, "n1-gpu0")]; n != 4 || m != 1 {
		t.Errorf("%d get_status and %d allocate endpoints for n1-gpu0, want 4 and 1", n, m)
	}
	for i, dev := range []string{"n1-gpu0", "n1-gpu1"} {
		u := checkLedger(t, nc, h, dev, i)
		// Each client keeps rounds/3 allocations.
		if want := clients / 2 * rounds / 3; u.Allocations != want {
			t.Errorf("%s: %d allocations, want %d", dev, u.Allocations, want)
		}
	}
}

// TestABurstOfLargeRequestsIsAllAnswered: 400 requests of 800 KB sent at
// once are each answered (here INVALID_REQUEST: an over-long purpose), none
// dropped by the endpoint's pending limits (with the client library's
// default of 64 MB, about 16 are: fewer requests never pile up that much).
func TestABurstOfLargeRequestsIsAllAnswered(t *testing.T) {
	t.Parallel() // a server and worker of its own: runs beside the other long ones
	srv := startServer(t)
	startWorker(t, srv, "n1", withDevices(1, GiB))
	nc := connect(t, srv)
	const n = 400
	body := []byte(`{"data":{"size_bytes":1024,"purpose":"` + strings.Repeat("p", 800<<10) + `"}}`)
	inbox := nats.NewInbox()
	replies := make(chan *nats.Msg, n)
	sub, err := nc.ChanSubscribe(inbox, replies)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for range n {
		if err := nc.PublishRequest(subjects.Request(subjects.Allocate, "n1-gpu0"), inbox, body); err != nil {
			t.Fatal(err)
		}
	}
	// 15 s is the promise; the race detector slows decoding 800 KB
	// bodies (four passes each) about tenfold on this path.
	within := 15 * time.Second
	if raceEnabled {
		within *= 4
	}
	deadline := time.After(within)
	for got := 0; got < n; got++ {
		select {
		case <-replies:
		case <-deadline:
			t.Fatalf("%d of %d requests answered", got, n)
		}
	}
}
