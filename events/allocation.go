package events

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
)

// Allocation event types, on memory.allocation.<device_id>.
const (
	// TypeAllocationExpired: a lease was not renewed in time; the worker
	// freed it.
	TypeAllocationExpired = "io.memworker.allocation.expired.v1"
	// TypeReservationExceeded: the process a reservation is for uses more
	// than it reserved (sent once per crossing).
	TypeReservationExceeded = "io.memworker.reservation.exceeded.v1"
	// Brokered handoff, about a holder: asked to release memory for a
	// waiter of higher priority; its release verified; failed (reason:
	// timeout, refused, not_verified); asked to take its memory again.
	TypeReclaimRequested = "io.memworker.reclaim.requested.v1"
	TypeReclaimCompleted = "io.memworker.reclaim.completed.v1"
	TypeReclaimFailed    = "io.memworker.reclaim.failed.v1"
	TypeReclaimRestored  = "io.memworker.reclaim.restored.v1"
)

// Allocation is the data of an allocation event.
type Allocation struct {
	DeviceID string `json:"device_id"`
	Node     string `json:"node"`
	// AllocationID is the allocation's id; of a batch (many leases of one
	// tenant expired at once), the first one's, and AllocationIDs lists
	// them all (SizeBytes is then their sum).
	AllocationID  string   `json:"allocation_id"`
	AllocationIDs []string `json:"allocation_ids,omitempty"`
	// Tenant is the account the allocation was made for (absent for the
	// worker's own).
	Tenant         string                  `json:"tenant,omitempty"`
	AllocationType subjects.AllocationType `json:"allocation_type"`
	SizeBytes      int64                   `json:"size_bytes"`
	// PID and ObservedBytes, for a reservation: its process, and what the
	// process uses.
	PID           int        `json:"pid,omitempty"`
	ObservedBytes int64      `json:"observed_bytes,omitempty"`
	ExpiresAt     *time.Time `json:"expires_at,omitempty"`
	ObservedAt    time.Time  `json:"observed_at"`
	// A holder's reclaim events: its priority and the waiter's, what it
	// was asked to give back by when, what it gave back, the seconds from
	// the ask to its answer (release_seconds) and from its answer to the
	// release verified in the ledger and by NVML (verify_seconds), and why
	// a release failed.
	Priority       int        `json:"priority,omitempty"`
	WaiterPriority int        `json:"waiter_priority,omitempty"`
	BytesWanted    int64      `json:"bytes_wanted,omitempty"`
	Deadline       *time.Time `json:"deadline,omitempty"`
	BytesReleased  int64      `json:"bytes_released,omitempty"`
	ReleaseSeconds float64    `json:"release_seconds,omitempty"`
	VerifySeconds  float64    `json:"verify_seconds,omitempty"`
	Reason         string     `json:"reason,omitempty"`
}

// PublishAllocation sends an allocation event of type typ on
// memory.allocation.<device_id>.<tenant>, kept in the stream like pressure
// events.
func (p *Publisher) PublishAllocation(ctx context.Context, typ string, data Allocation) error {
	e, err := build(typ, Source(data.Node, data.DeviceID), data.DeviceID, data.ObservedAt, data)
	if err != nil {
		return fmt.Errorf("building %s: %w", typ, err)
	}
	msg, err := p.message(e)
	if err != nil {
		return err
	}
	msg.Subject = subjects.AllocationEvents(data.DeviceID, data.Tenant)
	return p.send(ctx, msg, e.ID())
}

// DecodeAllocation reads an allocation event (structured mode).
func DecodeAllocation(msg *nats.Msg) (string, Allocation, error) {
	var data Allocation
	e, err := decodeEvent(msg)
	if err != nil {
		return "", data, err
	}
	if err := e.DataAs(&data); err != nil {
		return e.Type(), data, fmt.Errorf("decoding allocation data: %w", err)
	}
	return e.Type(), data, nil
}
