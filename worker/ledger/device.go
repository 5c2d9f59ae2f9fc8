package ledger

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/monitor"
)

// Config is what a Device needs. ID, Backend and Thresholds are required.
type Config struct {
	// ID is the device's id on the wire; Node the host's name.
	ID, Node string
	Info     device.Info
	Backend  Backend
	// Thresholds are the pressure levels.
	Thresholds monitor.Thresholds
	// IdleAfter is how long an allocation goes unused before
	// recommendations suggest offloading it.
	IdleAfter time.Duration
	// TruthMaxAge and TelemetryMaxAge bound how old the readings of device
	// truth and of telemetry in a reply may be (readings.go).
	TruthMaxAge, TelemetryMaxAge time.Duration
}

// Device is one device's state. It is not safe for concurrent use.
type Device struct {
	cfg     Config
	id      string
	index   int
	backend Backend

	pools  [2]*alloc.Pool // by device.Kind
	allocs map[string]*allocation
	// byRequest finds an allocation by the request that made it.
	byRequest map[string]*allocation
	pressure  monitor.Tracker
	history   *history
	truth     truth
	tele      telemetry
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
	// origin is the request that made it, when it came with a request_id.
	origin Origin
}

// Origin is the request that made an allocation: its request_id and a
// digest of its payload. A retry of it, however late, finds the allocation
// (MadeBy) instead of allocating again.
type Origin struct {
	RequestID string
	Digest    uint64
}

// idle reports whether no transfer is using the allocation, so it may be
// freed.
func (a *allocation) idle() bool { return a.busy == 0 }

// relocatable reports whether the allocation's bytes may change place:
// idle, and not exported (another process maps its address).
func (a *allocation) relocatable() bool { return a.idle() && !a.Exported }

// New returns the state of an empty device.
func New(cfg Config) *Device {
	d := &Device{
		cfg:       cfg,
		id:        cfg.ID,
		index:     cfg.Info.Index,
		backend:   cfg.Backend,
		allocs:    map[string]*allocation{},
		byRequest: map[string]*allocation{},
		history:   newHistory(),
	}
	for _, k := range []device.Kind{device.VRAM, device.Pinned} {
		d.pools[k] = alloc.New(source{b: cfg.Backend, dev: d.index, kind: k})
	}
	return d
}

// ID is the device's id on the wire.
func (d *Device) ID() string { return d.id }

// Index is the device's index in its backend.
func (d *Device) Index() int { return d.index }

// Info identifies the device.
func (d *Device) Info() device.Info { return d.cfg.Info }

// Len is how many allocations the ledger holds.
func (d *Device) Len() int { return len(d.allocs) }

// PoolStats are the statistics of the pool of one kind of memory.
func (d *Device) PoolStats(kind device.Kind) alloc.Stats { return d.pools[kind].Stats() }

// Fragmentation is the VRAM pool's fragmentation.
func (d *Device) Fragmentation() alloc.Fragmentation { return d.pools[device.VRAM].Fragmentation() }

// KindOf is where memory of an allocation type lives.
func KindOf(t subjects.AllocationType) device.Kind {
	if t == subjects.Pinned {
		return device.Pinned
	}
	return device.VRAM
}

func (d *Device) loc(a *allocation) device.Location {
	return device.Location{Device: d.index, Kind: a.kind, Addr: a.block.Addr()}
}

// Locate tells where an allocation's bytes are and how many there are. The
// location is valid until the allocation is moved, transferred or freed.
func (d *Device) Locate(id string) (device.Location, int64, error) {
	a, ok := d.allocs[id]
	if !ok {
		return device.Location{}, 0, fmt.Errorf("allocation %s on %s: %w", id, d.id, ErrAllocationNotFound)
	}
	return d.loc(a), a.SizeBytes, nil
}

// free returns a ledger entry's block to its pool and forgets it. An error
// means the ledger and the pool disagree: a bug, never input; the entry
// stays so the disagreement remains visible.
func (d *Device) free(a *allocation) error {
	if err := d.pools[a.kind].Free(a.block); err != nil {
		return fmt.Errorf("ledger entry %s is not allocated in its pool: %w", a.AllocationID, err)
	}
	delete(d.allocs, a.AllocationID)
	if a.origin.RequestID != "" {
		delete(d.byRequest, a.origin.RequestID)
	}
	d.history.events.push(memEvent{at: time.Now(), bytes: a.ReservedBytes})
	return nil
}

// add enters a new allocation in the ledger.
func (d *Device) add(a *allocation) {
	d.allocs[a.AllocationID] = a
	if a.origin.RequestID != "" {
		d.byRequest[a.origin.RequestID] = a
	}
	d.history.events.push(memEvent{at: a.CreatedAt, bytes: a.ReservedBytes, alloc: true})
}

// MadeBy returns the live allocation a request made, and the digest of
// that request's payload.
func (d *Device) MadeBy(requestID string) (subjects.Allocation, uint64, bool) {
	a, ok := d.byRequest[requestID]
	if !ok {
		return subjects.Allocation{}, 0, false
	}
	return a.Allocation, a.origin.Digest, true
}

// Audit checks that the ledger and the pools agree: every kind's pool has
// handed out exactly the bytes the ledger's entries hold.
func (d *Device) Audit() error {
	var held [2]int64
	for _, a := range d.allocs {
		held[a.kind] += a.ReservedBytes
	}
	for k, p := range d.pools {
		if s := p.Stats(); s.AllocatedBytes != held[k] {
			return fmt.Errorf("%s %v: the ledger holds %d bytes, the pool says %d are allocated", d.id, device.Kind(k), held[k], s.AllocatedBytes)
		}
	}
	return nil
}

// sorted lists the ledger's entries by id (ids are UUIDv7, so by creation
// time).
func (d *Device) sorted() []*allocation {
	out := make([]*allocation, 0, len(d.allocs))
	for _, a := range d.allocs {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b *allocation) int { return strings.Compare(a.AllocationID, b.AllocationID) })
	return out
}

// list returns the allocations keep accepts, by id.
func (d *Device) list(keep func(*allocation) bool) []subjects.Allocation {
	out := []subjects.Allocation{}
	for _, a := range d.allocs {
		if keep(a) {
			out = append(out, a.Allocation)
		}
	}
	slices.SortFunc(out, func(a, b subjects.Allocation) int { return strings.Compare(a.AllocationID, b.AllocationID) })
	return out
}
