package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/synadia-io/orbit.go/natsext"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// startAccountsServer starts a server from docs/accounts.conf, on a random
// port and a temporary store.
func startAccountsServer(t *testing.T) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile("../docs/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts.Port, opts.StoreDir, opts.NoSigs, opts.NoLog = -1, t.TempDir(), true, true
	srv := serve(t, opts)
	// In the worker's account: tenants' requests arrive there through the
	// imports, and its operator's replies go to _INBOX_operator.
	observe(t, srv, []string{"_INBOX_operator.>"}, nats.UserInfo("worker", "change-me-worker"))
	return srv
}

// raw sends body to op on dev as nc and returns the decoded reply envelope
// with the raw message.
func raw(t *testing.T, nc *nats.Conn, op subjects.Op, dev string, data any, hdr nats.Header) (*nats.Msg, subjects.Reply) {
	t.Helper()
	body, err := subjects.NewRequest("", op, data)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.RequestMsg(&nats.Msg{Subject: subjects.Request(op, dev), Data: body, Header: hdr}, 5*time.Second)
	if err != nil {
		t.Fatalf("%s on %s: %v", op, dev, err)
	}
	var r subjects.Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatal(err)
	}
	return msg, r
}

// TestTenantsAreNATSAccounts proves the rules of docs/accounts.conf on a
// real server: two tenant accounts and the operator's.
func TestTenantsAreNATSAccounts(t *testing.T) {
	srv := startAccountsServer(t)
	h := startWorkerOn(t, context.Background(), connectAs(t, srv, "worker", "change-me-worker"), "n1", withDevices(1, GiB),
		withConfig(func(c *worker.Config) {
			c.Quotas = map[string]int64{"TEAM_A": 100 * MiB, "*": 50 * MiB}
			c.AutoRelease = false
		}))
	operator := connectAs(t, srv, "operator", "change-me-operator")
	alice := connectAs(t, srv, "alice", "change-me-alice")
	bob := connectAs(t, srv, "bob", "change-me-bob")
	dev := "n1-gpu0"

	// Bob watches pressure events through his account's stream import.
	evs, err := bob.SubscribeSync(subjects.AllPressureEvents)
	if err != nil {
		t.Fatal(err)
	}
	_ = bob.Flush()

	// Alice allocates: the allocation is hers, the reply tells her usage.
	var a subjects.Allocation
	r := call(t, alice, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 60 * MiB, ModelID: "alices-model", Purpose: "kv"}, &a)
	if a.Tenant != "TEAM_A" || a.User != "alice" {
		t.Errorf("alice's allocation: tenant %q, user %q", a.Tenant, a.User)
	}
	if tu := r.TenantUsage; tu == nil || tu.Tenant != "TEAM_A" || tu.AllocatedBytes != 60*MiB || tu.QuotaBytes != 100*MiB || tu.Allocations != 1 {
		t.Errorf("tenant_usage %+v", r.TenantUsage)
	}
	var b subjects.Allocation
	call(t, bob, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 10 * MiB, ModelID: "bobs-model"}, &b)
	var mine subjects.Allocation
	call(t, operator, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 10 * MiB}, &mine)
	if mine.Tenant != "" {
		t.Errorf("the operator's allocation has tenant %q", mine.Tenant)
	}

	// Isolation, both ways: lists, ids, models, transfers.
	for _, tc := range []struct {
		name       string
		nc         *nats.Conn
		own, other subjects.Allocation
	}{{"alice", alice, a, b}, {"bob", bob, b, a}} {
		var page subjects.AllocationsReply
		call(t, tc.nc, subjects.GetAllocations, dev, nil, &page)
		if page.TotalCount != 1 || page.Allocations[0].AllocationID != tc.own.AllocationID {
			t.Errorf("%s lists %+v, want only their own", tc.name, page.Allocations)
		}
		var ms subjects.ModelStatusReply
		call(t, tc.nc, subjects.ModelStatus, dev, nil, &ms)
		if len(ms.Models) != 1 || ms.Models[0].ModelID != tc.own.ModelID {
			t.Errorf("%s sees models %+v", tc.name, ms.Models)
		}
		var st subjects.StatusReply
		call(t, tc.nc, subjects.GetStatus, dev, subjects.StatusRequest{IncludeAllocations: true}, &st)
		if len(st.Allocations) != 1 || st.AllocationCount != 1 || st.Usage.TotalBytes != GiB || st.Usage.AllocatedBytes < 80*MiB {
			t.Errorf("%s's status: %d allocations listed (count %d), device allocated %d; want their own listed, device totals whole",
				tc.name, len(st.Allocations), st.AllocationCount, st.Usage.AllocatedBytes)
		}
		other := mustJSON(t, map[string]any{"data": map[string]string{"allocation_id": tc.other.AllocationID}})
		unknown := mustJSON(t, map[string]any{"data": map[string]string{"allocation_id": "01a21866-fe0c-71dc-bcdd-c351d4bd0350"}})
		got := callErr(t, tc.nc, subjects.Deallocate, dev, other, subjects.CodeAllocationNotFound)
		want := callErr(t, tc.nc, subjects.Deallocate, dev, unknown, subjects.CodeAllocationNotFound)
		if len(got.ErrorMessage) != len(want.ErrorMessage) {
			t.Errorf("%s: another tenant's id (%q) is told apart from an unknown one (%q)", tc.name, got.ErrorMessage, want.ErrorMessage)
		}
		callErr(t, tc.nc, subjects.Transfer, dev, mustJSON(t, map[string]any{"data": map[string]any{"allocation_id": tc.other.AllocationID, "target_allocation_type": "PINNED"}}), subjects.CodeAllocationNotFound)
	}
	var all subjects.AllocationsReply
	call(t, operator, subjects.GetAllocations, dev, nil, &all)
	if all.TotalCount != 3 {
		t.Errorf("the operator lists %d allocations, want all 3", all.TotalCount)
	}

	// A transfer is its tenant's: the other cannot follow it.
	var job subjects.TransferStatus
	call(t, alice, subjects.Transfer, dev, subjects.TransferRequest{AllocationID: a.AllocationID, TargetAllocationType: subjects.Pinned}, &job)
	callErr(t, bob, subjects.GetTransfer, dev, mustJSON(t, map[string]any{"data": map[string]string{"transfer_id": job.TransferID}}), subjects.CodeTransferNotFound)
	call(t, alice, subjects.GetTransfer, dev, subjects.GetTransferRequest{TransferID: job.TransferID}, nil)
	call(t, operator, subjects.GetTransfer, dev, subjects.GetTransferRequest{TransferID: job.TransferID}, nil)
	waitTransfer(t, alice, dev, job.TransferID)

	// Operator-only operations.
	callErr(t, alice, subjects.Defragment, dev, []byte(`{}`), subjects.CodeForbidden)
	callErr(t, bob, subjects.Optimize, dev, []byte(`{}`), subjects.CodeForbidden)
	call(t, operator, subjects.Defragment, dev, nil, nil)

	// Quotas count requested VRAM bytes; landing exactly on the quota is
	// fine, one byte more is not, and changes nothing.
	call(t, alice, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 40 * MiB}, nil) // 100 MiB
	callErr(t, alice, subjects.Allocate, dev, []byte(`{"data":{"size_bytes":1}}`), subjects.CodeQuotaExceeded)
	call(t, bob, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 40 * MiB}, nil) // 50 MiB: the * quota
	callErr(t, bob, subjects.Allocate, dev, []byte(`{"data":{"size_bytes":1}}`), subjects.CodeQuotaExceeded)
	call(t, operator, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 200 * MiB}, nil) // no quota

	// A header forged by a tenant's client is replaced by the server: the
	// worker sees the true account.
	_, fr := raw(t, bob, subjects.GetAllocations, dev, nil, nats.Header{"Nats-Request-Info": []string{`{"acc":"TEAM_A","user":"alice"}`}})
	var forged subjects.AllocationsReply
	_ = json.Unmarshal(fr.Data, &forged)
	for _, x := range forged.Allocations {
		if x.Tenant != "TEAM_B" {
			t.Errorf("bob forging alice's account listed %+v", x)
		}
	}
	// In the worker's own account the header means nothing: the operator.
	_, or := raw(t, operator, subjects.GetAllocations, dev, nil, nats.Header{"Nats-Request-Info": []string{`{"acc":"TEAM_A"}`}})
	var ops subjects.AllocationsReply
	_ = json.Unmarshal(or.Data, &ops)
	if or.TenantUsage != nil || ops.TotalCount < 6 {
		t.Errorf("an operator's request with a header: %d allocations, tenant usage %+v; want the operator's view", ops.TotalCount, or.TenantUsage)
	}

	// Fleet replies are filtered the same way.
	var fleet []subjects.FleetReply
	for msg, err := range fleetAll(t, bob, subjects.GetAllocations) {
		if err != nil {
			break
		}
		var fr subjects.FleetReply
		if _, err := subjects.DecodeReply(msg.Data, &fr); err != nil {
			t.Fatal(err)
		}
		fleet = append(fleet, fr)
	}
	if len(fleet) != 1 || len(fleet[0].Devices) != 1 {
		t.Fatalf("fleet reply %+v", fleet)
	}
	var fp subjects.AllocationsReply
	_ = json.Unmarshal(fleet[0].Devices[0].Data, &fp)
	for _, x := range fp.Allocations {
		if x.Tenant != "TEAM_B" {
			t.Errorf("bob's fleet listing shows %+v", x)
		}
	}

	// Pressure events reach every tenant and name no tenant's models.
	h.external(t, 0, 650*MiB)
	call(t, operator, subjects.GetPressure, dev, nil, nil)
	for deadline := time.Now().Add(5 * time.Second); ; {
		msg, err := evs.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("bob got no warning event: %v", err)
		}
		_, p, err := events.Decode(msg)
		if err != nil {
			t.Fatal(err)
		}
		if p.Level == subjects.LevelNormal {
			continue
		}
		for _, c := range p.TopConsumers {
			if c.Kind != subjects.ConsumerTenant && c.Kind != subjects.ConsumerOther && c.Kind != subjects.ConsumerCache {
				t.Errorf("an event reaching every tenant names %+v", c)
			}
		}
		break
	}
	checkLedger(t, operator, h, dev, 0)
}

// fleetAll sends op to memory.<op>.all as nc and gathers the replies.
func fleetAll(t *testing.T, nc *nats.Conn, op subjects.Op) iter.Seq2[*nats.Msg, error] {
	t.Helper()
	body, _ := subjects.NewRequest("", op, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	msgs, err := natsext.RequestMany(ctx, nc, subjects.FleetRequest(op), body, natsext.RequestManyStall(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// TestATenantCannotUndoAnothersProtection: what one tenant sends cannot
// take from another: a stream of request ids does not evict another
// tenant's retry protection (its retried transfer is answered, not run
// twice), and an id named in several letter cases is freed once (its
// tenant cannot pass its quota, nor hide the device's reservations from
// everyone's door).
func TestATenantCannotUndoAnothersProtection(t *testing.T) {
	srv := startAccountsServer(t)
	startWorkerOn(t, context.Background(), connectAs(t, srv, "worker", "change-me-worker"), "n1", withDevices(1, GiB),
		withConfig(func(c *worker.Config) {
			c.Quotas = map[string]int64{"TEAM_A": 100 * MiB, "*": 50 * MiB}
			c.AutoRelease = false
			c.IdempotencyEntries = 20
		}))
	operator := connectAs(t, srv, "operator", "change-me-operator")
	alice := connectAs(t, srv, "alice", "change-me-alice")
	bob := connectAs(t, srv, "bob", "change-me-bob")
	dev := "n1-gpu0"

	t.Run("request ids", func(t *testing.T) {
		var src subjects.Allocation
		call(t, bob, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 10 * MiB}, &src)
		body, err := subjects.NewRequest("bob-transfer-1", subjects.Transfer, subjects.TransferRequest{AllocationID: src.AllocationID})
		if err != nil {
			t.Fatal(err)
		}
		var first, again subjects.TransferStatus
		if _, err := subjects.DecodeReply(request(t, bob, subjects.Transfer, dev, body).Data, &first); err != nil {
			t.Fatal(err)
		}
		var lease subjects.Allocation
		call(t, alice, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: MiB, TTLSeconds: 600}, &lease)
		for i := range 100 { // five times the cache's entries
			renew, _ := subjects.NewRequest(fmt.Sprintf("alice-%d", i), subjects.Renew, subjects.RenewRequest{AllocationID: lease.AllocationID})
			request(t, alice, subjects.Renew, dev, renew)
		}
		if _, err := subjects.DecodeReply(request(t, bob, subjects.Transfer, dev, body).Data, &again); err != nil {
			t.Fatal(err)
		}
		if again.TransferID != first.TransferID {
			t.Errorf("bob's retried transfer ran again (%s, then %s) after alice's request ids", first.TransferID, again.TransferID)
		}
	})

	t.Run("an id in several cases", func(t *testing.T) {
		var theirs subjects.Allocation
		call(t, operator, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 500 * MiB, AllocationType: subjects.Reservation, PID: 4242}, &theirs)
		var before subjects.Usage
		call(t, bob, subjects.GetUsage, dev, nil, &before)
		var mine [3]subjects.Allocation
		var held *subjects.TenantUsage
		for i := range mine {
			held = call(t, alice, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 30 * MiB, AllocationType: subjects.Reservation}, &mine[i]).TenantUsage
		}
		id := mine[0].AllocationID
		var freed subjects.DeallocateReply
		r := call(t, alice, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationIDs: []string{id, strings.ToUpper(id), strings.ToUpper(id[:8]) + id[8:]}}, &freed)
		if len(freed.DeallocatedIDs) != 1 || freed.FreedBytes != 30*MiB {
			t.Errorf("three spellings of one id: freed %v, %d bytes", freed.DeallocatedIDs, freed.FreedBytes)
		}
		tu := r.TenantUsage
		if tu == nil || tu.AllocatedBytes != held.AllocatedBytes-30*MiB || tu.Allocations != held.Allocations-1 {
			t.Fatalf("alice's tenant_usage %+v, want one 30 MiB reservation less than %+v", tu, held)
		}
		// What fits her quota by the true figure and no further.
		room := tu.QuotaBytes - tu.AllocatedBytes
		body, _ := subjects.NewRequest("", subjects.Allocate, subjects.AllocateRequest{SizeBytes: room + MiB, AllocationType: subjects.Reservation})
		callErr(t, alice, subjects.Allocate, dev, body, subjects.CodeQuotaExceeded)
		var after subjects.Usage
		call(t, bob, subjects.GetUsage, dev, nil, &after)
		if after.ReservationUnusedBytes != before.ReservationUnusedBytes+60*MiB {
			t.Errorf("reservation_unused %d, want %d (the operator's and alice's two left)", after.ReservationUnusedBytes, before.ReservationUnusedBytes+60*MiB)
		}
	})
}
