package ledger

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// Allocation ids are UUIDv7s, which take 10 random bytes each. Reading
// them from the system a few at a time was 7 % of an allocate and
// deallocate (docs/performance.md); the pool reads them in batches from
// the same source. Ids are no secret (the ledger checks who may use one),
// so randomness held on the heap costs nothing.
func init() { uuid.EnableRandPool() }

// Allocate grants an allocate request through the door. A request that
// cannot be granted now and may wait (wait_seconds) joins the admission
// queue: the ticket names it, and Admit decides it later. A retry of a
// request (the same call.RequestID), however late, gets the allocation it
// made or joins its wait, never a second one; with another payload it is a
// conflict.
func (d *Device) Allocate(ctx context.Context, call Call, req *subjects.AllocateRequest) (subjects.Allocation, Ticket, error) {
	var sum uint64
	if call.RequestID != "" {
		sum = digest(req)
		if a, ok := d.byRequest[originKey{call.Who.Tenant, call.RequestID}]; ok {
			if a.origin().Digest != sum {
				return subjects.Allocation{}, 0, conflict(call.RequestID)
			}
			return d.view(a), 0, nil
		}
		if w := d.queue.find(call.Who, call.RequestID); w != nil {
			if w.digest != sum {
				return subjects.Allocation{}, 0, conflict(call.RequestID)
			}
			return subjects.Allocation{}, w.ticket, nil
		}
	}
	a, final, err := d.allocate(ctx, call, req, sum, allocateClaim(req, call.Who))
	if err == nil || final || req.WaitSeconds <= 0 || !waits(err) {
		return a, 0, err
	}
	t, err := d.enqueueWaiter(call, req, nil, sum, err)
	return subjects.Allocation{}, t, err
}

func conflict(requestID string) error {
	return Errorf(ErrConflict, "request_id %s was already used for a different request (memory.allocate)", requestID)
}

// digest sums what an allocate asks for, after validation (so any
// spelling, key order or letter case of the type gives the same sum).
func digest(r *subjects.AllocateRequest) uint64 {
	var buf [256]byte
	b := strconv.AppendInt(buf[:0], r.SizeBytes, 10)
	b = append(append(b, '|'), r.AllocationType...)
	b = strconv.AppendInt(append(b, '|'), r.Alignment, 10)
	b = strconv.AppendQuote(append(b, '|'), r.Purpose)
	b = strconv.AppendBool(append(b, '|'), r.Persistent)
	b = strconv.AppendQuote(append(b, '|'), r.ModelID)
	b = strconv.AppendFloat(append(b, '|'), r.TTLSeconds, 'g', -1, 64)
	b = strconv.AppendBool(append(b, '|'), r.Export)
	b = strconv.AppendInt(append(b, '|'), int64(r.PID), 10)
	b = strconv.AppendFloat(append(b, '|'), r.WaitSeconds, 'g', -1, 64)
	b = strconv.AppendInt(append(b, '|'), int64(r.Priority), 10)
	if c := r.Reclaim; c != nil {
		b = strconv.AppendQuote(append(b, '|'), c.Subject+"|"+c.ReleaseURL+"|"+c.RestoreURL)
		b = strconv.AppendInt(append(b, '|'), c.KeepBytes, 10)
	}
	return maphash.Bytes(digestSeed, b)
}

// digestSeed seeds the digests of requests: they are compared within this
// process only, and a seed a client cannot know keeps it from making two
// requests with one digest.
var digestSeed = maphash.MakeSeed()

// allocate passes c through the door and, granted, takes the memory from
// the pool of the request's kind (or a segment of its own for an exported
// allocation; nothing for a reservation) and enters it in the ledger.
func (d *Device) allocate(ctx context.Context, call Call, req *subjects.AllocateRequest, sum uint64, c claim) (subjects.Allocation, bool, error) {
	if err := holderAllowed(req.Reclaim, call.Who); err != nil {
		return subjects.Allocation{}, true, err
	}
	if final, err := d.door(ctx, c, call.Now); err != nil {
		return subjects.Allocation{}, final, err
	}
	kind := c.kind
	id, err := uuid.NewV7()
	if err != nil {
		return subjects.Allocation{}, false, err
	}
	now := call.Now.UTC()
	a := &allocation{
		id:        id,
		size:      req.SizeBytes,
		rsv:       req.SizeBytes,
		alignment: max(req.Alignment, alloc.MinBlock),
		created:   now.UnixNano(),
		lastUsed:  now.UnixNano(),
		purpose:   req.Purpose,
		model:     req.ModelID,
		typ:       typeCode(req.AllocationType),
		kind:      kind,
		tenant:    call.Who.Tenant,
	}
	a.set(persistent, req.Persistent)
	if req.PID != 0 || call.Who.User != "" || call.RequestID != "" {
		a.extra = &extra{pid: req.PID, user: call.Who.User}
		if call.RequestID != "" {
			a.extra.origin = madeBy{RequestID: call.RequestID, Digest: sum, tenant: call.Who.Tenant}
		}
	}
	if req.TTLSeconds > 0 {
		a.ttl = int64(math.Round(req.TTLSeconds * float64(time.Second)))
		a.expires = now.UnixNano() + a.ttl
	}
	if kind != kindNone {
		if err := d.take(ctx, a, req); err != nil {
			return subjects.Allocation{}, false, err
		}
	}
	d.hold(a, req.Reclaim, req.Priority)
	d.add(a)
	if c.deviceMemory() {
		d.lend(a, c.priority, a.size)
	}
	return d.view(a), false, nil
}

// take allocates a's block from the pool of its kind (a segment of its
// own, exported, when req asks).
func (d *Device) take(ctx context.Context, a *allocation, req *subjects.AllocateRequest) error {
	ex, canExport := d.backend.(Exporter)
	if req.Export && !canExport {
		return fmt.Errorf("the %s backend cannot export memory: %w", d.backend.Name(), ErrUnsupported)
	}
	var block *alloc.Block
	var err error
	if req.Export {
		block, err = d.pools[a.kind].AllocDedicated(ctx, req.SizeBytes)
	} else {
		block, err = d.pools[a.kind].Alloc(ctx, req.SizeBytes, req.Alignment)
	}
	if a.kind == device.VRAM && errors.Is(err, device.ErrOutOfMemory) {
		// The pool's own words name the piece it failed to map; say what
		// was asked and what is available.
		if u, uerr := d.Usage(ctx, time.Unix(0, a.created)); uerr == nil {
			return fmt.Errorf("%s of %s do not fit %s: %s available: %w", bytesize.Format(req.SizeBytes), req.AllocationType, d.id,
				bytesize.Format(u.AvailableBytes), device.ErrOutOfMemory)
		}
	}
	if err != nil {
		return fmt.Errorf("allocating %s of %s on %s: %w", bytesize.Format(req.SizeBytes), req.AllocationType, d.id, err)
	}
	a.block, a.rsv = block, block.Size()
	if !req.Export {
		return nil
	}
	handle, err := ex.Export(ctx, d.index, block.SegmentAddr())
	if err != nil {
		_ = d.freeBlock(a.kind, block)
		return fmt.Errorf("exporting %s: %w", a.idString(), err)
	}
	if a.extra == nil {
		a.extra = &extra{}
	}
	a.set(exported, true)
	a.extra.ipcHandle = base64.StdEncoding.EncodeToString(handle)
	a.extra.ipcOffset = int64(block.Addr() - block.SegmentAddr())
	return nil
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
// total_count with more than one filter costs a walk of the ledger. What
// reservations' processes use is as of a telemetry reading at most
// TelemetryMaxAge old: a holder watches it fall as it gives memory back.
func (d *Device) Allocations(ctx context.Context, call Call, req *subjects.AllocationsRequest) subjects.AllocationsReply {
	who := call.Who
	if d.byType[reservationCode] != 0 {
		d.readTelemetry(ctx, call.Now)
	}
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
	// The cache is shared: a tenant's clear frees its own allocations only.
	if who.Operator() && (req.ReleaseCached == nil || *req.ReleaseCached) {
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
		d.leaseSet(a)
		reply.Renewed[i] = subjects.RenewedLease{AllocationID: ids[i], ExpiresAt: time.Unix(0, a.expires).UTC()}
	}
	return reply, nil
}
