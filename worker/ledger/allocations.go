package ledger

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// Allocate allocates memory from the device's pool of the request's kind
// (or a segment of its own for an exported allocation) and enters it in
// the ledger, made by origin (which may be empty).
func (d *Device) Allocate(ctx context.Context, req *subjects.AllocateRequest, origin Origin, who Who) (subjects.Allocation, error) {
	if origin.RequestID != "" {
		// A tenant's request ids are its own: another's may be the same.
		origin.tenant = who.Tenant
		if a, ok := d.byRequest[origin.key()]; ok {
			if a.origin().Digest != origin.Digest {
				return subjects.Allocation{}, Errorf(ErrConflict, "request_id %s was already used for a different request (memory.allocate)", origin.RequestID)
			}
			return d.view(a), nil
		}
	}
	if q, ok := d.quota(who.Tenant); ok && KindOf(req.AllocationType) != device.Pinned {
		held := int64(0)
		if f := d.tenants[who.Tenant]; f != nil {
			held = f.requested
		}
		if held+req.SizeBytes > q {
			return subjects.Allocation{}, Errorf(ErrQuotaExceeded, "tenant %s holds %s on %s; %s more would pass its quota of %s",
				who.Tenant, bytesize.Format(held), d.id, bytesize.Format(req.SizeBytes), bytesize.Format(q))
		}
	}
	kind := KindOf(req.AllocationType)
	if n := d.cfg.MaxAllocations; n > 0 && len(d.allocs) >= n {
		return subjects.Allocation{}, fmt.Errorf("%s holds %d allocations, the most it keeps (--max-allocations); free some first: %w",
			d.id, n, device.ErrOutOfMemory)
	}
	if kind != device.Pinned && req.SizeBytes > d.cfg.Info.TotalBytes {
		return subjects.Allocation{}, fmt.Errorf("size_bytes %s exceeds the total memory of %s, %s: %w",
			bytesize.Format(req.SizeBytes), d.id, bytesize.Format(d.cfg.Info.TotalBytes), device.ErrOutOfMemory)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return subjects.Allocation{}, err
	}
	// Memory promised to reservations is nobody else's: a reservation, or
	// a VRAM allocation while reservations exist, must fit what is
	// available.
	if kind == kindNone || (kind == device.VRAM && d.byType[reservationCode] > 0) {
		u, err := d.Usage(ctx, time.Now().UTC())
		if err != nil {
			return subjects.Allocation{}, err
		}
		if req.SizeBytes > u.AvailableBytes {
			return subjects.Allocation{}, fmt.Errorf("%s do not fit %s: %s available (%s promised to reservations): %w",
				bytesize.Format(req.SizeBytes), d.id, bytesize.Format(u.AvailableBytes), bytesize.Format(u.ReservationUnusedBytes), device.ErrOutOfMemory)
		}
	}
	if kind == kindNone {
		return d.reserve(req, id, origin, who), nil
	}
	ex, canExport := d.backend.(Exporter)
	if req.Export && !canExport {
		return subjects.Allocation{}, fmt.Errorf("the %s backend cannot export memory: %w", d.backend.Name(), ErrUnsupported)
	}
	var block *alloc.Block
	if req.Export {
		block, err = d.pools[kind].AllocDedicated(ctx, req.SizeBytes)
	} else {
		block, err = d.pools[kind].Alloc(ctx, req.SizeBytes, req.Alignment)
	}
	if err != nil {
		return subjects.Allocation{}, fmt.Errorf("allocating %s of %s on %s: %w", bytesize.Format(req.SizeBytes), req.AllocationType, d.id, err)
	}
	var handle []byte
	if req.Export {
		if handle, err = ex.Export(ctx, d.index, block.SegmentAddr()); err != nil {
			_ = d.freeBlock(kind, block)
			return subjects.Allocation{}, fmt.Errorf("exporting %s: %w", id, err)
		}
	}
	now := time.Now().UTC()
	a := &allocation{
		id:        id,
		size:      req.SizeBytes,
		alignment: max(req.Alignment, alloc.MinBlock),
		created:   now.UnixNano(),
		lastUsed:  now.UnixNano(),
		purpose:   req.Purpose,
		model:     req.ModelID,
		block:     block,
		rsv:       block.Size(),
		typ:       typeCode(req.AllocationType),
		kind:      kind,
		tenant:    who.Tenant,
	}
	a.set(persistent, req.Persistent)
	if who.User != "" {
		a.extra = &extra{user: who.User}
	}
	if origin.RequestID != "" {
		if a.extra == nil {
			a.extra = &extra{}
		}
		a.extra.origin = origin
	}
	if req.Export {
		if a.extra == nil {
			a.extra = &extra{}
		}
		a.set(exported, true)
		a.extra.ipcHandle = base64.StdEncoding.EncodeToString(handle)
		a.extra.ipcOffset = int64(block.Addr() - block.SegmentAddr())
	}
	if req.TTLSeconds > 0 {
		a.ttl = int64(math.Round(req.TTLSeconds * float64(time.Second)))
		a.expires = now.UnixNano() + a.ttl
	}
	d.add(a)
	return d.view(a), nil
}

// Deallocate frees allocations by id, all or nothing: every id is checked
// before any is freed.
func (d *Device) Deallocate(req *subjects.DeallocateRequest, who Who) (subjects.DeallocateReply, error) {
	ids := req.IDs()
	entries := make([]*allocation, len(ids))
	for i, id := range ids {
		a, ok := d.get(id)
		entries[i] = a
		if !ok || !a.visibleTo(who) {
			return subjects.DeallocateReply{}, fmt.Errorf("allocation %s on %s: %w", id, d.id, ErrAllocationNotFound)
		}
		if !a.idle() {
			return subjects.DeallocateReply{}, fmt.Errorf("allocation %s is being transferred; free it when the transfer ends: %w", id, ErrConflict)
		}
	}
	reply := subjects.DeallocateReply{DeallocatedIDs: []string{}}
	for i, a := range entries {
		bytes := a.reserved()
		if err := d.free(a); err != nil {
			return subjects.DeallocateReply{}, err
		}
		reply.DeallocatedIDs = append(reply.DeallocatedIDs, ids[i])
		reply.FreedBytes += bytes
	}
	return reply, nil
}

// Allocations lists the allocations the request's filters accept, one page
// of them, in id order. A page costs its length, not the ledger's size;
// total_count with more than one filter costs a walk of the ledger.
func (d *Device) Allocations(req *subjects.AllocationsRequest, who Who) subjects.AllocationsReply {
	keep := func(a *allocation) bool {
		return a.visibleTo(who) && matches(a, req.Purpose, req.ModelID, req.AllocationType) &&
			(req.Persistent == nil || a.has(persistent) == *req.Persistent)
	}
	limit := req.Limit
	if limit <= 0 {
		limit = subjects.DefaultPageLimit
	}
	if len(req.AllocationIDs) > 0 {
		reply := subjects.AllocationsReply{Allocations: []subjects.Allocation{}}
		for _, id := range (&subjects.DeallocateRequest{AllocationIDs: req.AllocationIDs}).IDs() {
			if a, ok := d.get(id); ok && keep(a) {
				reply.Allocations = append(reply.Allocations, d.view(a))
			}
		}
		reply.TotalCount = len(reply.Allocations)
		return reply
	}
	reply := subjects.AllocationsReply{Allocations: []subjects.Allocation{}, TotalCount: d.count(req, who, keep)}
	visit := func(a *allocation) bool {
		if !keep(a) {
			return true
		}
		if len(reply.Allocations) == limit {
			reply.NextCursor = reply.Allocations[len(reply.Allocations)-1].AllocationID
			return false
		}
		reply.Allocations = append(reply.Allocations, d.view(a))
		return true
	}
	if req.Cursor == "" {
		d.order.Ascend(visit)
	} else {
		after, _ := cursorKey(req.Cursor)
		d.order.AscendGreaterOrEqual(after, func(a *allocation) bool {
			if a.id == after.id {
				return true
			}
			return visit(a)
		})
	}
	return reply
}

// cursorKey is where a page after cursor starts: the entry with the
// cursor's id, or where it would be (a cursor that is not an id sorts by
// its bytes).
func cursorKey(cursor string) (*allocation, bool) {
	if u, ok := parseID(cursor); ok {
		return &allocation{id: u}, true
	}
	var u [16]byte
	copy(u[:], cursor)
	return &allocation{id: u}, false
}

// count is how many allocations the request's filters accept: from the
// figures kept by name and type when there is at most one filter.
func (d *Device) count(req *subjects.AllocationsRequest, who Who, keep func(*allocation) bool) int {
	filters := 0
	if !who.Operator() {
		filters = 2 // a tenant's own: walk (its count alone is in the figures)
		if f := d.tenants[who.Tenant]; f == nil {
			return 0
		}
	}
	for _, set := range []bool{req.Purpose != "", req.ModelID != "", req.AllocationType != "", req.Persistent != nil} {
		if set {
			filters++
		}
	}
	switch {
	case filters == 0:
		return len(d.allocs)
	case filters == 1 && req.Purpose != "":
		return d.purposes.entries(req.Purpose)
	case filters == 1 && req.ModelID != "":
		return d.modelNames.entries(req.ModelID)
	case filters == 1 && req.AllocationType != "":
		return d.byType[typeCode(req.AllocationType)]
	}
	n := 0
	for _, a := range d.allocs {
		if keep(a) {
			n++
		}
	}
	return n
}

func matches(a *allocation, purpose, modelID string, t subjects.AllocationType) bool {
	return (purpose == "" || a.purpose == purpose) &&
		(modelID == "" || a.model == modelID) &&
		(t == "" || a.allocType() == t)
}

// Clear frees the allocations the filters accept (persistent ones only
// with force, busy ones never) and, unless told not to, returns the pools'
// empty cached segments.
func (d *Device) Clear(ctx context.Context, req *subjects.ClearRequest, who Who) (subjects.ClearReply, error) {
	var reply subjects.ClearReply
	for _, a := range d.allocs {
		if !a.visibleTo(who) || !matches(a, req.Purpose, req.ModelID, req.AllocationType) {
			continue
		}
		if a.has(persistent) && !req.Force {
			reply.SkippedPersistent++
			continue
		}
		if !a.idle() {
			reply.SkippedBusy++
			continue
		}
		bytes := a.reserved()
		if err := d.free(a); err != nil {
			return reply, err
		}
		reply.ClearedAllocations++
		reply.ClearedBytes += bytes
	}
	if req.ReleaseCached == nil || *req.ReleaseCached {
		for _, p := range d.pools {
			n, bytes, err := p.Release(ctx)
			reply.ReleasedSegments += n
			reply.ReleasedBytes += bytes
			if err != nil {
				return reply, fmt.Errorf("releasing cached segments of %s: %w", d.id, err)
			}
		}
	}
	return reply, nil
}

// Expired is an allocation freed because its ttl passed.
type Expired struct {
	subjects.Allocation
	Bytes int64
}

// Expire frees the allocations whose ttl has passed by now and are not
// being transferred. It returns those it freed; an error is a ledger that
// disagrees with its pool, for the log (the other expired ones are freed).
func (d *Device) Expire(now time.Time) ([]Expired, error) {
	var out []Expired
	var errs []error
	for _, a := range d.allocs {
		if !a.expiredAt(now) || !a.idle() {
			continue
		}
		e := Expired{Allocation: d.view(a), Bytes: a.reserved()}
		if err := d.free(a); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, e)
	}
	return out, errors.Join(errs...)
}

// Renew extends leases, all or nothing: each by ttl_seconds from now, or
// by its own ttl. An allocation that is not a lease becomes one when
// ttl_seconds is given.
func (d *Device) Renew(req *subjects.RenewRequest, who Who, now time.Time) (subjects.RenewReply, error) {
	ids := req.IDs()
	entries := make([]*allocation, len(ids))
	ttl := int64(math.Round(req.TTLSeconds * float64(time.Second)))
	for i, id := range ids {
		a, ok := d.get(id)
		if !ok || !a.visibleTo(who) {
			return subjects.RenewReply{}, fmt.Errorf("allocation %s on %s: %w", id, d.id, ErrAllocationNotFound)
		}
		if a.ttl == 0 && ttl == 0 {
			return subjects.RenewReply{}, Errorf(ErrInvalid, "allocation %s is not a lease: give ttl_seconds to make it one", id)
		}
		entries[i] = a
	}
	reply := subjects.RenewReply{Renewed: make([]subjects.RenewedLease, len(entries))}
	for i, a := range entries {
		if ttl > 0 {
			a.ttl = ttl
		}
		a.expires = now.UnixNano() + a.ttl
		reply.Renewed[i] = subjects.RenewedLease{AllocationID: ids[i], ExpiresAt: time.Unix(0, a.expires).UTC()}
	}
	return reply, nil
}

// reserve enters a reservation: size bytes held for process pid, which
// allocates them itself.
func (d *Device) reserve(req *subjects.AllocateRequest, id uuid.UUID, origin Origin, who Who) subjects.Allocation {
	now := time.Now().UTC()
	a := &allocation{
		id: id, size: req.SizeBytes, rsv: req.SizeBytes, alignment: max(req.Alignment, alloc.MinBlock),
		created: now.UnixNano(), lastUsed: now.UnixNano(), purpose: req.Purpose, model: req.ModelID,
		typ: reservationCode, kind: kindNone, tenant: who.Tenant,
	}
	a.set(persistent, req.Persistent)
	if req.PID != 0 || who.User != "" || origin.RequestID != "" {
		a.extra = &extra{pid: req.PID, user: who.User, origin: origin}
	}
	if req.TTLSeconds > 0 {
		a.ttl = int64(math.Round(req.TTLSeconds * float64(time.Second)))
		a.expires = now.UnixNano() + a.ttl
	}
	d.add(a)
	return d.view(a)
}
