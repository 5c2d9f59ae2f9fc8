package ledger

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// Allocate allocates memory from the device's pool of the request's kind
// (or a segment of its own for an exported allocation) and enters it in
// the ledger, made by origin (which may be empty).
func (d *Device) Allocate(ctx context.Context, req *subjects.AllocateRequest, origin Origin) (subjects.Allocation, error) {
	kind := KindOf(req.AllocationType)
	if kind == device.VRAM && req.SizeBytes > d.cfg.Info.TotalBytes {
		return subjects.Allocation{}, fmt.Errorf("size_bytes %d exceeds the device's total memory of %d bytes: %w",
			req.SizeBytes, d.cfg.Info.TotalBytes, device.ErrOutOfMemory)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return subjects.Allocation{}, err
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
		return subjects.Allocation{}, fmt.Errorf("allocating %d bytes of %s on %s: %w", req.SizeBytes, req.AllocationType, d.id, err)
	}
	var handle []byte
	if req.Export {
		if handle, err = ex.Export(ctx, d.index, block.SegmentAddr()); err != nil {
			_ = d.pools[kind].Free(block)
			return subjects.Allocation{}, fmt.Errorf("exporting %s: %w", id, err)
		}
	}
	now := time.Now().UTC()
	a := &allocation{
		Allocation: subjects.Allocation{
			AllocationID:   id.String(),
			DeviceID:       d.id,
			SizeBytes:      req.SizeBytes,
			ReservedBytes:  block.Size(),
			AllocationType: req.AllocationType,
			Alignment:      max(req.Alignment, alloc.MinBlock),
			Purpose:        req.Purpose,
			ModelID:        req.ModelID,
			Persistent:     req.Persistent,
			CreatedAt:      now,
			LastUsedAt:     now,
		},
		kind:   kind,
		block:  block,
		origin: origin,
	}
	if req.Export {
		a.Exported = true
		a.IPCHandle = base64.StdEncoding.EncodeToString(handle)
		a.IPCOffset = int64(block.Addr() - block.SegmentAddr())
	}
	if req.TTLSeconds > 0 {
		exp := now.Add(time.Duration(math.Round(req.TTLSeconds * float64(time.Second))))
		a.ExpiresAt = &exp
	}
	d.add(a)
	return a.Allocation, nil
}

// Deallocate frees allocations by id, all or nothing: every id is checked
// before any is freed.
func (d *Device) Deallocate(req *subjects.DeallocateRequest) (subjects.DeallocateReply, error) {
	ids := req.IDs()
	for _, id := range ids {
		a, ok := d.allocs[id]
		if !ok {
			return subjects.DeallocateReply{}, fmt.Errorf("allocation %s on %s: %w", id, d.id, ErrAllocationNotFound)
		}
		if !a.idle() {
			return subjects.DeallocateReply{}, fmt.Errorf("allocation %s is being transferred; free it when the transfer ends: %w", id, ErrConflict)
		}
	}
	reply := subjects.DeallocateReply{DeallocatedIDs: []string{}}
	for _, id := range ids {
		a := d.allocs[id]
		if err := d.free(a); err != nil {
			return subjects.DeallocateReply{}, err
		}
		reply.DeallocatedIDs = append(reply.DeallocatedIDs, id)
		reply.FreedBytes += a.ReservedBytes
	}
	return reply, nil
}

// Allocations lists the allocations the request's filters accept, one page
// of them.
func (d *Device) Allocations(req *subjects.AllocationsRequest) subjects.AllocationsReply {
	all := d.list(func(a *allocation) bool {
		return matches(a, req.Purpose, req.ModelID, req.AllocationType) &&
			(req.Persistent == nil || a.Persistent == *req.Persistent)
	})
	return page(all, req.Cursor, req.Limit)
}

// page returns the page of all (sorted by id) after cursor, at most limit
// long, with the cursor of the next page when there is one.
func page(all []subjects.Allocation, cursor string, limit int) subjects.AllocationsReply {
	start := 0
	if cursor != "" {
		start, _ = slices.BinarySearchFunc(all, cursor, func(a subjects.Allocation, c string) int {
			return strings.Compare(a.AllocationID, c)
		})
		if start < len(all) && all[start].AllocationID == cursor {
			start++
		}
	}
	p := all[start:min(len(all), start+limit)]
	reply := subjects.AllocationsReply{Allocations: p, TotalCount: len(all)}
	if start+len(p) < len(all) {
		reply.NextCursor = p[len(p)-1].AllocationID
	}
	return reply
}

func matches(a *allocation, purpose, modelID string, t subjects.AllocationType) bool {
	return (purpose == "" || a.Purpose == purpose) &&
		(modelID == "" || a.ModelID == modelID) &&
		(t == "" || a.AllocationType == t)
}

// Clear frees the allocations the filters accept (persistent ones only
// with force, busy ones never) and, unless told not to, returns the pools'
// empty cached segments.
func (d *Device) Clear(ctx context.Context, req *subjects.ClearRequest) (subjects.ClearReply, error) {
	var reply subjects.ClearReply
	for _, a := range d.allocs {
		if !matches(a, req.Purpose, req.ModelID, req.AllocationType) {
			continue
		}
		if a.Persistent && !req.Force {
			reply.SkippedPersistent++
			continue
		}
		if !a.idle() {
			reply.SkippedBusy++
			continue
		}
		if err := d.free(a); err != nil {
			return reply, err
		}
		reply.ClearedAllocations++
		reply.ClearedBytes += a.ReservedBytes
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
	AllocationID string
	Bytes        int64
}

// Expire frees the allocations whose ttl has passed by now and are not
// being transferred. It returns those it freed; an error is a ledger that
// disagrees with its pool, for the log (the other expired ones are freed).
func (d *Device) Expire(now time.Time) ([]Expired, error) {
	var out []Expired
	var errs []error
	for _, a := range d.allocs {
		if a.ExpiresAt == nil || now.Before(*a.ExpiresAt) || !a.idle() {
			continue
		}
		if err := d.free(a); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, Expired{AllocationID: a.AllocationID, Bytes: a.ReservedBytes})
	}
	return out, errors.Join(errs...)
}
