package worker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/monitor"
)

// gpu is one device the worker owns: its pools, its ledger of allocations,
// its replay cache and its pressure. mu guards everything in it; every
// operation on the device holds it.
type gpu struct {
	id      string
	index   int
	info    device.Info
	backend Backend

	mu       sync.Mutex
	pools    [2]*alloc.Pool // by device.Kind
	ledger   map[string]*allocation
	replays  *replayCache
	pressure monitor.Tracker
	history  *history
	// lastEvent is when the last pressure event was queued; unavailable is
	// set while the device does not answer.
	lastEvent   time.Time
	unavailable bool
	// truth and telemetry are the last readings of the backend, reused
	// while young (readings.go).
	truth        truth
	truthMaxAge  time.Duration
	telemetry    telemetry
	telemetryAge time.Duration
}

// allocation is a ledger entry: what the client sees and the block behind
// it. kind is where the bytes are now: Pinned for PINNED allocations and for
// offloaded VRAM ones.
type allocation struct {
	subjects.Allocation
	kind  device.Kind
	block *alloc.Block
	// busy counts transfers reading or writing the allocation: while it is
	// not zero the allocation is neither moved nor freed.
	busy int
}

// idle reports whether no transfer is using the allocation, so it may be
// freed.
func (a *allocation) idle() bool { return a.busy == 0 }

// relocatable reports whether the allocation's bytes may change place:
// idle, and not exported (another process maps its address).
func (a *allocation) relocatable() bool { return a.idle() && !a.Exported }

// loc is where the allocation's bytes are.
func (g *gpu) loc(a *allocation) device.Location {
	return device.Location{Device: g.index, Kind: a.kind, Addr: a.block.Addr()}
}

func newGPU(cfg *Config, node string, info device.Info) *gpu {
	g := &gpu{
		id:      subjects.DeviceID(node, info.Index),
		index:   info.Index,
		info:    info,
		backend: cfg.Backend,
		ledger:  map[string]*allocation{},
		replays: newReplayCache(cfg.IdempotencyWindow, cfg.IdempotencyEntries),
		history: newHistory(),

		truthMaxAge:  cfg.TruthMaxAge,
		telemetryAge: cfg.TelemetryMaxAge,
	}
	for _, k := range []device.Kind{device.VRAM, device.Pinned} {
		g.pools[k] = alloc.New(source{b: cfg.Backend, dev: info.Index, kind: k})
	}
	return g
}

func kindOf(t subjects.AllocationType) device.Kind {
	if t == subjects.Pinned {
		return device.Pinned
	}
	return device.VRAM
}

// free returns a ledger entry's block to its pool and forgets it. The caller
// holds mu. An error means the ledger and the pool disagree: a bug, never
// input; the entry stays so the disagreement remains visible.
func (g *gpu) free(a *allocation) error {
	if err := g.pools[a.kind].Free(a.block); err != nil {
		return fmt.Errorf("ledger entry %s is not allocated in its pool: %w", a.AllocationID, err)
	}
	delete(g.ledger, a.AllocationID)
	g.history.events.push(memEvent{at: time.Now(), bytes: a.ReservedBytes})
	return nil
}

// add enters a new allocation in the ledger. The caller holds mu.
func (g *gpu) add(a *allocation) {
	g.ledger[a.AllocationID] = a
	g.history.events.push(memEvent{at: a.CreatedAt, bytes: a.ReservedBytes, alloc: true})
}

// usage reads device truth and puts the worker's own figures beside it. It
// runs after every mutation, so it leaves out what needs a walk of the
// ledger (ByPurpose: see withPurposes). The caller holds mu.
func (g *gpu) usage(ctx context.Context, now time.Time) (subjects.Usage, error) {
	vram, pinned := g.pools[device.VRAM].Stats(), g.pools[device.Pinned].Stats()
	mi, err := g.deviceTruth(ctx, now, vram.ReservedBytes)
	if err != nil {
		return subjects.Usage{}, err
	}
	used := mi.TotalBytes - mi.FreeBytes
	u := subjects.Usage{
		DeviceID:        g.id,
		TotalBytes:      mi.TotalBytes,
		FreeBytes:       mi.FreeBytes,
		UsedBytes:       used,
		ReservedBytes:   vram.ReservedBytes,
		AllocatedBytes:  vram.AllocatedBytes,
		RequestedBytes:  vram.RequestedBytes,
		CachedBytes:     vram.ReservedBytes - vram.AllocatedBytes,
		OtherBytes:      max(used-vram.ReservedBytes, 0),
		PinnedHostBytes: pinned.ReservedBytes,
		Allocations:     len(g.ledger),
		SampledAt:       now,
	}
	if mi.TotalBytes > 0 {
		u.UsageRatio = float64(used) / float64(mi.TotalBytes)
		u.UsagePercentage = u.UsageRatio * 100
	}
	return u, nil
}

// withPurposes adds the split by purpose to u, for replies. The caller
// holds mu.
func (g *gpu) withPurposes(u subjects.Usage) subjects.Usage {
	u.ByPurpose = g.byPurpose()
	return u
}

// unspecified is the purpose of allocations made without one.
const unspecified = "unspecified"

func (g *gpu) byPurpose() []subjects.PurposeUsage {
	idx := map[string]int{}
	out := []subjects.PurposeUsage{}
	for _, a := range g.ledger {
		if a.kind != device.VRAM {
			continue
		}
		p := a.Purpose
		if p == "" {
			p = unspecified
		}
		i, ok := idx[p]
		if !ok {
			i = len(out)
			idx[p] = i
			out = append(out, subjects.PurposeUsage{Purpose: p})
		}
		out[i].Allocations++
		out[i].AllocatedBytes += a.ReservedBytes
	}
	slices.SortFunc(out, func(a, b subjects.PurposeUsage) int { return strings.Compare(a.Purpose, b.Purpose) })
	return out
}

// observe feeds device truth to the pressure tracker and returns the
// pressure as get_pressure reports it, and whether the level changed. The
// caller holds mu.
func (g *gpu) observe(th monitor.Thresholds, u subjects.Usage) (subjects.Pressure, bool) {
	changed := g.pressure.Observe(th, u.UsageRatio, u.SampledAt)
	level, prev := g.pressure.Level()
	if changed {
		g.history.levels.push(levelChange{at: u.SampledAt, level: level})
	}
	return subjects.Pressure{
		DeviceID:          g.id,
		Level:             level,
		PreviousLevel:     prev,
		UsageRatio:        u.UsageRatio,
		WarningThreshold:  th.Warning,
		CriticalThreshold: th.Critical,
		UsedBytes:         u.UsedBytes,
		FreeBytes:         u.FreeBytes,
		TotalBytes:        u.TotalBytes,
		ChangedAt:         g.pressure.ChangedAt(),
		Trend:             g.pressure.Trend(),
		SampledAt:         u.SampledAt,
	}, changed
}
