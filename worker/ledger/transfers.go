package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/device"
)

// A transfer copies an allocation's bytes between devices of a host, or
// between a device and host memory. The worker runs it as a job in three
// steps on the ledgers involved, each under its device's lock, with the copy
// itself between them holding no lock: Lend on the source, Receive on the
// destination, then Settle on each. While lent, the source is busy: nothing
// moves or frees it.

// Lent is a source allocation lent to a transfer.
type Lent struct {
	Allocation subjects.Allocation
	Loc        device.Location
	// TTL is the source's lease ttl (0: not a lease): its copy is a lease
	// of the same ttl.
	TTL time.Duration
}

// Target is where a transfer goes: the destination device's id and total
// memory, and the type of memory.
type Target struct {
	DeviceID   string
	TotalBytes int64
	Type       subjects.AllocationType
}

// Lend checks that allocation id may go to target by mode, and marks it
// busy until Settle (or Return, when the job never runs).
func (d *Device) Lend(id string, target Target, mode string, who Who) (Lent, error) {
	a, ok := d.get(id)
	if !ok || !a.visibleTo(who) {
		return Lent{}, fmt.Errorf("allocation %s on %s: %w", id, d.id, ErrAllocationNotFound)
	}
	if a.reservation() {
		return Lent{}, Errorf(ErrUnsupported, "allocation %s is a reservation: the worker holds none of its bytes to transfer", id)
	}
	kind := KindOf(target.Type)
	if mode == subjects.ModeMove && target.DeviceID == d.id && kind == a.kind {
		return Lent{}, Errorf(ErrInvalid, "moving %s to the memory it is in does nothing; use copy, another device or target_allocation_type", a.idString())
	}
	if !a.idle() {
		return Lent{}, fmt.Errorf("allocation %s is already being transferred: %w", a.idString(), ErrConflict)
	}
	if kind == device.VRAM && a.size > target.TotalBytes {
		return Lent{}, fmt.Errorf("%s do not fit %s (%s in all): %w", bytesize.Format(a.size), target.DeviceID, bytesize.Format(target.TotalBytes), device.ErrOutOfMemory)
	}
	a.busy++
	return Lent{Allocation: d.view(a), Loc: d.loc(a), TTL: time.Duration(a.ttl)}, nil
}

// Return ends a loan whose transfer never ran.
func (d *Device) Return(id string) {
	if a, ok := d.get(id); ok {
		d.unbusy(a)
	}
}

// Receive grants the destination of a transfer of src through the door:
// a new allocation of type t, counted against the source's tenant, that is
// busy until Settle. It returns the new allocation's id and where its bytes
// go.
func (d *Device) Receive(ctx context.Context, call Call, src Lent, t subjects.AllocationType) (string, device.Location, error) {
	s := src.Allocation
	c := claim{tenant: s.Tenant, size: s.SizeBytes, kind: KindOf(t), entry: true}
	if c.deviceMemory() {
		c.quota = s.SizeBytes
	}
	if _, err := d.door(ctx, c, call.Now); err != nil {
		return "", device.Location{}, err
	}
	block, err := d.pools[c.kind].Alloc(ctx, s.SizeBytes, s.Alignment)
	if c.kind == device.VRAM && errors.Is(err, device.ErrOutOfMemory) {
		// The pool's own words name the piece it failed to map; say what
		// the copy needs and what is available.
		if u, uerr := d.Usage(ctx, call.Now); uerr == nil {
			return "", device.Location{}, fmt.Errorf("a copy of %s does not fit %s: %s available: %w",
				bytesize.Format(s.SizeBytes), d.id, bytesize.Format(u.AvailableBytes), device.ErrOutOfMemory)
		}
	}
	if err != nil {
		return "", device.Location{}, fmt.Errorf("reserving %s on %s: %w", bytesize.Format(s.SizeBytes), d.id, err)
	}
	// The copy keeps the source's size, alignment, names, persistence and
	// lease ttl; it is a new allocation of its own type, neither offloaded
	// nor exported.
	now := call.Now
	dest := &allocation{
		id: uuid.Must(uuid.NewV7()), size: s.SizeBytes, alignment: s.Alignment,
		created: now.UnixNano(), lastUsed: now.UnixNano(),
		purpose: s.Purpose, model: s.ModelID, tenant: s.Tenant, block: block, rsv: block.Size(), busy: 1, typ: typeCode(t), kind: c.kind,
	}
	dest.set(persistent, s.Persistent)
	if s.User != "" {
		dest.extra = &extra{user: s.User}
	}
	if src.TTL > 0 {
		dest.ttl = int64(src.TTL)
		dest.expires = now.UnixNano() + dest.ttl
	}
	d.add(dest)
	if c.deviceMemory() {
		d.lend(dest, c.priority, dest.size)
	}
	return dest.idString(), d.loc(dest), nil
}

// Settle ends a transfer's use of allocation id: it is no longer busy, it
// was last used at now when touch, and it is freed when drop (a moved source, or
// the destination of a failed transfer).
func (d *Device) Settle(id string, touch, drop bool, now time.Time) error {
	a, found := d.get(id)
	if !found {
		return fmt.Errorf("settling transfer of %s: %w", id, ErrAllocationNotFound)
	}
	d.unbusy(a)
	if touch {
		a.lastUsed = now.UnixNano()
	}
	if drop {
		return d.free(a)
	}
	return nil
}
