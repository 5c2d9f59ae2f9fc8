package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nuid"

	"github.com/memworker/memworker/events"
	"github.com/memworker/memworker/internal/httpcall"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/ledger"
)

// The shell's part of a brokered handoff: the ledger decides which holder
// to ask and when it has released (ledger/holders.go); the shell sends the
// asks (NATS request-reply to the holder's subject, or an HTTP POST to its
// URL) and announces the events.

// announceHandoff queues a reclaim event about a holder.
func (w *Worker) announceHandoff(g *gpu, e ledger.HandoffEvent, now time.Time) {
	typ := map[string]string{ledger.HandoffRequested: events.TypeReclaimRequested, ledger.HandoffCompleted: events.TypeReclaimCompleted,
		ledger.HandoffFailed: events.TypeReclaimFailed, ledger.HandoffRestored: events.TypeReclaimRestored}[e.Type]
	h := e.Holder
	data := events.Allocation{DeviceID: g.ID(), Node: w.cfg.Node, AllocationID: h.AllocationID, Tenant: h.Tenant,
		AllocationType: h.AllocationType, SizeBytes: h.SizeBytes, PID: h.PID, ObservedBytes: h.ObservedBytes,
		ExpiresAt: h.ExpiresAt, ObservedAt: now.UTC(), Priority: h.Priority, WaiterPriority: e.WaiterPriority,
		BytesWanted: e.BytesWanted, BytesReleased: e.BytesReleased, ReleaseSeconds: e.Seconds, VerifySeconds: e.VerifySeconds, Reason: e.Reason}
	if !e.Deadline.IsZero() {
		d := e.Deadline.UTC()
		data.Deadline = &d
	}
	w.log.Info("handoff", "event", e.Type, "device", g.ID(), "holder", h.AllocationID, "bytes_wanted", e.BytesWanted,
		"bytes_released", e.BytesReleased, "reason", e.Reason)
	w.announceAllocation(typ, data)
}

// ask sends one ask to its holder and tells the ledger the answer; what
// the holder did is then verified by the ledger.
func (w *Worker) ask(g *gpu, a ledger.Ask) {
	ctx, cancel := context.WithDeadline(w.askCtx, a.Notice.Deadline)
	defer cancel()
	body, err := json.Marshal(struct {
		RequestID string                 `json:"request_id"`
		Action    string                 `json:"action"`
		Data      subjects.ReclaimNotice `json:"data"`
	}{nuid.Next(), a.Action, a.Notice})
	if err == nil {
		err = w.send(ctx, a, body)
	}
	if a.Action != subjects.ActionRelease {
		if err != nil {
			w.log.Warn("a holder did not take its memory again", "device", g.ID(), "holder", a.Holder.AllocationID, "err", err)
		}
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.Answered(a.Holder.AllocationID, err, time.Now())
	w.recheck(g)
}

// send delivers body to the holder: over NATS, or by HTTP POST, and
// returns the holder's refusal.
func (w *Worker) send(ctx context.Context, a ledger.Ask, body []byte) error {
	if a.Spec.Subject != "" {
		nc := w.nc.Load()
		if nc == nil {
			return errors.New("not connected")
		}
		msg, err := nc.RequestWithContext(ctx, a.Spec.Subject, body)
		if err != nil {
			return err
		}
		var r subjects.Reply
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			return fmt.Errorf("the holder's answer is not a reply envelope: %w", err)
		}
		return r.Err()
	}
	url := a.Spec.ReleaseURL
	if a.Action == subjects.ActionRestore {
		if url = a.Spec.RestoreURL; url == "" {
			return nil // nothing to tell
		}
	}
	return httpcall.Do(ctx, http.MethodPost, url, body)
}
