package integration

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// expiredIDs gathers the allocation ids of expiry events from sub until
// want ids came or timeout passed.
func expiredIDs(t *testing.T, sub *nats.Subscription, want int, timeout time.Duration) map[string]string {
	t.Helper()
	got := map[string]string{} // id -> tenant
	deadline := time.Now().Add(timeout)
	for len(got) < want && time.Now().Before(deadline) {
		msg, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		typ, data, err := events.DecodeAllocation(msg)
		if err != nil || typ != events.TypeAllocationExpired {
			continue
		}
		for _, id := range data.AllocationIDs {
			got[id] = data.Tenant
		}
	}
	return got
}

// TestATenantSeesItsOwnAllocationEvents: through the generated accounts
// config, a tenant subscribed to every allocation event it can import
// receives its own expiries and no other tenant's; the operator sees all;
// a tenant can renew.
func TestATenantSeesItsOwnAllocationEvents(t *testing.T) {
	t.Parallel() // a server and worker of its own; it mostly waits
	srv := startAccountsServer(t)
	startWorkerOn(t, context.Background(), connectAs(t, srv, "worker", "change-me-worker"), "n1", withDevices(1, GiB))
	operator := connectAs(t, srv, "operator", "change-me-operator")
	alice := connectAs(t, srv, "alice", "change-me-alice")
	bob := connectAs(t, srv, "bob", "change-me-bob")
	dev := "n1-gpu0"
	subs := map[string]*nats.Subscription{}
	for name, nc := range map[string]*nats.Conn{"operator": operator, "alice": alice, "bob": bob} {
		sub, err := nc.SubscribeSync(subjects.AllAllocationEvents)
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		subs[name] = sub
	}
	var a, b subjects.Allocation
	call(t, alice, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 0.3}, &a)
	call(t, bob, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 0.3}, &b)
	var rr subjects.RenewReply
	call(t, alice, subjects.Renew, dev, subjects.RenewRequest{AllocationID: a.AllocationID, TTLSeconds: 0.5}, &rr)
	if len(rr.Renewed) != 1 {
		t.Errorf("alice's renew: %+v", rr)
	}
	all := expiredIDs(t, subs["operator"], 2, 5*time.Second)
	if all[a.AllocationID] != "TEAM_A" || all[b.AllocationID] != "TEAM_B" {
		t.Errorf("the operator saw %v", all)
	}
	for name, want := range map[string]string{"alice": a.AllocationID, "bob": b.AllocationID} {
		got := expiredIDs(t, subs[name], 2, 500*time.Millisecond)
		if len(got) != 1 || got[want] == "" {
			t.Errorf("%s received %v, want its own %s only", name, got, want)
		}
	}
}

// TestABurstOfExpiriesIsAllAnnounced: thousands of leases expiring at
// once are every one announced (in batches), none dropped.
func TestABurstOfExpiriesIsAllAnnounced(t *testing.T) {
	t.Parallel() // a server and worker of its own
	srv := startJetStreamServer(t)
	startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) { c.ExpiryInterval = time.Second }))
	nc := connect(t, srv)
	dev := "n1-gpu0"
	sub, err := nc.SubscribeSync(subjects.AllAllocationEvents)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	const n = 3000
	var wg sync.WaitGroup
	ids := make(chan string, n)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				var a subjects.Allocation
				call(t, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 4096, TTLSeconds: 1}, &a)
				ids <- a.AllocationID
			}
		})
	}
	wg.Wait()
	close(ids)
	got := expiredIDs(t, sub, n, 10*time.Second)
	for id := range ids {
		if _, ok := got[id]; !ok {
			t.Fatalf("%d of %d expiries announced; %s missing", len(got), n, id)
		}
	}
}

// TestTheRolesConfigLetsTheWorkerPublish: a worker connected as the
// WORKER role of docs/nats-server.conf publishes its events (a lease's
// expiry reaches a reader) and meets no permission violation.
func TestTheRolesConfigLetsTheWorkerPublish(t *testing.T) {
	srv := startConfiguredServer(t)
	var mu sync.Mutex
	var violations []string
	f := client.Flags{User: "worker", Password: "change-me-worker", InboxPrefix: "_INBOX_worker"}
	opts, err := f.Options()
	if err != nil {
		t.Fatal(err)
	}
	wc, err := nats.Connect(srv.ClientURL(), append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		mu.Lock()
		violations = append(violations, err.Error())
		mu.Unlock()
	}))...)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	var logMu sync.Mutex
	startWorkerOn(t, context.Background(), wc, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}))
	reader := connectAs(t, srv, "reader", "change-me-reader")
	sub, err := reader.SubscribeSync(subjects.AllAllocationEvents)
	if err != nil {
		t.Fatal(err)
	}
	_ = reader.Flush()
	operator := connectAs(t, srv, "operator", "change-me-operator")
	var a subjects.Allocation
	call(t, operator, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 0.2}, &a)
	if got := expiredIDs(t, sub, 1, 5*time.Second); len(got) != 1 {
		t.Errorf("the reader got no expiry of %s: %v", a.AllocationID, got)
	}
	mu.Lock()
	defer mu.Unlock()
	logMu.Lock()
	defer logMu.Unlock()
	if len(violations) > 0 || strings.Contains(strings.ToLower(logs.String()), "permission") {
		t.Errorf("permission violations: %v\n%s", violations, logs.String())
	}
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
