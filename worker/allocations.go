package worker

import (
	"context"
	"encoding/base64"
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

func (w *Worker) allocate(ctx context.Context, g *gpu, req *subjects.AllocateRequest) (any, error) {
	kind := kindOf(req.AllocationType)
	if kind == device.VRAM && req.SizeBytes > g.info.TotalBytes {
		return nil, fmt.Errorf("size_bytes %d exceeds the device's total memory of %d bytes: %w",
			req.SizeBytes, g.info.TotalBytes, device.ErrOutOfMemory)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	var handle []byte
	ex, canExport := g.backend.(exporter)
	if req.Export && !canExport {
		return nil, fmt.Errorf("the %s backend cannot export memory: %w", g.backend.Name(), ErrUnsupported)
	}
	var block *alloc.Block
	if req.Export {
		block, err = g.pools[kind].AllocDedicated(ctx, req.SizeBytes)
	} else {
		block, err = g.pools[kind].Alloc(ctx, req.SizeBytes, req.Alignment)
	}
	if err != nil {
		return nil, fmt.Errorf("allocating %d bytes of %s on %s: %w", req.SizeBytes, req.AllocationType, g.id, err)
	}
	if req.Export {
		if handle, err = ex.Export(ctx, g.index, block.SegmentAddr()); err != nil {
			_ = g.pools[kind].Free(block)
			return nil, fmt.Errorf("exporting %s: %w", id, err)
		}
	}
	now := time.Now().UTC()
	a := &allocation{
		Allocation: subjects.Allocation{
			AllocationID:   id.String(),
			DeviceID:       g.id,
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
		kind:  kind,
		block: block,
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
	g.add(a)
	return a.Allocation, nil
}

func (w *Worker) deallocate(_ context.Context, g *gpu, req *subjects.DeallocateRequest) (any, error) {
	ids := req.IDs()
	// All or nothing: check every id before freeing any.
	for _, id := range ids {
		a, ok := g.ledger[id]
		if !ok {
			return nil, fmt.Errorf("allocation %s on %s: %w", id, g.id, ErrAllocationNotFound)
		}
		if !a.idle() {
			return nil, fmt.Errorf("allocation %s is being transferred; free it when the transfer ends: %w", id, ErrConflict)
		}
	}
	reply := subjects.DeallocateReply{DeallocatedIDs: []string{}}
	for _, id := range ids {
		a := g.ledger[id]
		if err := g.free(a); err != nil {
			return nil, err
		}
		reply.DeallocatedIDs = append(reply.DeallocatedIDs, id)
		reply.FreedBytes += a.ReservedBytes
	}
	return reply, nil
}

func (w *Worker) getAllocations(_ context.Context, g *gpu, req *subjects.AllocationsRequest) (any, error) {
	all := g.list(func(a *allocation) bool {
		return matches(a, req.Purpose, req.ModelID, req.AllocationType) &&
			(req.Persistent == nil || a.Persistent == *req.Persistent)
	})
	start := 0
	if req.Cursor != "" {
		start, _ = slices.BinarySearchFunc(all, req.Cursor, func(a subjects.Allocation, c string) int {
			return strings.Compare(a.AllocationID, c)
		})
		if start < len(all) && all[start].AllocationID == req.Cursor {
			start++
		}
	}
	page := all[start:min(len(all), start+req.Limit)]
	reply := subjects.AllocationsReply{Allocations: page, TotalCount: len(all)}
	if start+len(page) < len(all) {
		reply.NextCursor = page[len(page)-1].AllocationID
	}
	return reply, nil
}

func matches(a *allocation, purpose, modelID string, t subjects.AllocationType) bool {
	return (purpose == "" || a.Purpose == purpose) &&
		(modelID == "" || a.ModelID == modelID) &&
		(t == "" || a.AllocationType == t)
}

// list returns the allocations keep accepts, by id (ids are UUIDv7, so by
// creation time). The caller holds mu.
func (g *gpu) list(keep func(*allocation) bool) []subjects.Allocation {
	out := []subjects.Allocation{}
	for _, a := range g.ledger {
		if keep(a) {
			out = append(out, a.Allocation)
		}
	}
	slices.SortFunc(out, func(a, b subjects.Allocation) int { return strings.Compare(a.AllocationID, b.AllocationID) })
	return out
}

func (w *Worker) clear(ctx context.Context, g *gpu, req *subjects.ClearRequest) (any, error) {
	var reply subjects.ClearReply
	for _, a := range g.ledger {
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
		if err := g.free(a); err != nil {
			return nil, err
		}
		reply.ClearedAllocations++
		reply.ClearedBytes += a.ReservedBytes
	}
	if req.ReleaseCached == nil || *req.ReleaseCached {
		for _, p := range g.pools {
			n, bytes, err := p.Release(ctx)
			reply.ReleasedSegments += n
			reply.ReleasedBytes += bytes
			if err != nil {
				return nil, fmt.Errorf("releasing cached segments of %s: %w", g.id, err)
			}
		}
	}
	return reply, nil
}

// expire frees g's allocations whose ttl has passed.
func (w *Worker) expire(g *gpu, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	expired := 0
	defer func() {
		if expired > 0 {
			w.recheck(g)
		}
	}()
	for _, a := range g.ledger {
		if a.ExpiresAt == nil || now.Before(*a.ExpiresAt) || !a.idle() {
			continue
		}
		if err := g.free(a); err != nil {
			w.log.Error("freeing an expired allocation", "device", g.id, "allocation_id", a.AllocationID, "err", err)
			continue
		}
		expired++
		w.log.Info("allocation expired", "device", g.id, "allocation_id", a.AllocationID, "bytes", a.ReservedBytes)
	}
}
