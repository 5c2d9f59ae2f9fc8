package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/google/btree"
	"github.com/google/uuid"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/monitor"
)

// Config is what a Device needs. ID, Backend and Thresholds are required.
type Config struct {
	// ID is the device's id on the wire; Node the host's name.
	ID, Node string
	// Gate, when set, closes the door to every grant (door.go).
	Gate    Gate
	Info    device.Info
	Backend Backend
	// Thresholds are the pressure levels.
	Thresholds monitor.Thresholds
	// IdleAfter is how long an allocation goes unused before
	// recommendations suggest offloading it.
	IdleAfter time.Duration
	// TruthMaxAge and TelemetryMaxAge bound how old the readings of device
	// truth and of telemetry in a reply may be (readings.go).
	TruthMaxAge, TelemetryMaxAge time.Duration
	// MaxAllocations caps the live allocations (0: no cap).
	MaxAllocations int
	// Quotas cap each tenant's requested bytes on the device, by tenant;
	// AnyTenant's applies to the tenants not named.
	Quotas map[string]int64
	// Pinned, when set, is where pinned segments come from (the host's
	// pool, shared by the devices); the device gives its empty pinned
	// segments back to it as soon as they empty, so another device can
	// use them. Without it they come from the backend and stay cached.
	Pinned alloc.Source
	// MapPiece, where the VRAM pool is on virtual memory, is the largest
	// piece of physical memory it maps at once (0: alloc.DefaultMaxPiece):
	// memory goes back to the device a whole piece at a time, and the
	// driver's cost of mapping grows with the number of pieces.
	MapPiece int64
	// StarvationGuard is how long a waiter may wait before requests of its
	// priority or lower stop passing it (0: DefaultStarvationGuard).
	StarvationGuard time.Duration
	// MaxWaiters caps the requests waiting on the device, a quarter of it
	// those of one tenant (0: DefaultMaxWaiters).
	MaxWaiters int
	// AutoRelease returns the pool's empty cached segments to the device
	// when a reading finds device truth at the warning threshold (Read).
	AutoRelease bool
	// ReclaimTimeout is how long a holder has to give memory back
	// (DefaultReclaimTimeout); ReclaimTolerance what a holder's process
	// may still use beyond its keep_bytes (DefaultReclaimTolerance).
	ReclaimTimeout   time.Duration
	ReclaimTolerance int64
	// ReturnCache gives the VRAM pool's cached memory beyond CacheKeep back
	// to the device once it has been cached CacheHold: what the worker
	// reports available is then available to every process on the GPU,
	// not only to its own clients.
	ReturnCache bool
	CacheHold   time.Duration
	CacheKeep   int64
	// ExpiryBatch is how late, at most, a lease is freed after its expiry
	// (expiry.go): the expiries that close to the previous pass are freed
	// together. Start, when set, is when the first batch began (the
	// device's start).
	ExpiryBatch time.Duration
	Start       time.Time
	// ParentOf, when set, tells which process started pid
	// (proctree.Parent): a reservation's process is then observed with
	// its children, as a model server whose engine runs in a child.
	ParentOf func(pid int) (parent int, ok bool)
}

// Defaults of the admission queue.
const (
	DefaultStarvationGuard = 10 * time.Second
	DefaultMaxWaiters      = 1024
)

// Device is one device's state. It is not safe for concurrent use.
type Device struct {
	cfg     Config
	id      string
	index   int
	backend Backend

	pools [2]*alloc.Pool // by device.Kind
	// allocs finds an entry by id, order keeps them in id order (for
	// pages), byRequest by the request that made them.
	allocs    map[uuid.UUID]*allocation
	order     *btree.BTreeG[*allocation]
	byRequest map[originKey]*allocation
	// purposes and models count the entries of each name, and their VRAM.
	purposes, modelNames names
	byType               [3]int                    // entries by type code
	tenants              map[string]*tenantFigures // by tenant, "" the operator
	pressure             monitor.Tracker
	history              *history
	truth                truth
	truthNotBefore       time.Time // no reading taken before is put (forgetTruth)
	tele                 telemetry
	queue                queue // allocates waiting for room
	// holders are the allocations with a reclaim spec, in the order they
	// were made; freedHolders the completions of holders freed while asked
	// to release.
	holders      []*allocation
	freedHolders []HandoffEvent
	// settle is until when, after a release, the queue is looked at again
	// every VerifyEvery (settleAt the next look) for its room to show.
	settle, settleAt time.Time
	// cachedSince is when the pool first cached more than CacheKeep (zero:
	// it does not); cacheFloor what it kept cached after its last return
	// (memory it cannot give back: free pieces of segments in use).
	cachedSince time.Time
	cacheFloor  int64
	// lastOther is other processes' use at the last Read (-1: none yet).
	lastOther int64
	// leases are the leases' expiries (expiry.go); lastExpire is when
	// Expire last freed any.
	leases     expiries
	lastExpire time.Time
}

// madeBy is the request that made an allocation: its request_id and a
// digest of its payload. A retry of it, however late, finds the allocation
// (Allocate) instead of allocating again.
type madeBy struct {
	RequestID string
	Digest    uint64
	tenant    string // whose request id it is
}

// originKey finds an allocation by its tenant's request id.
type originKey struct{ tenant, requestID string }

func (o madeBy) key() originKey { return originKey{o.tenant, o.RequestID} }

// New returns the state of an empty device.
func New(cfg Config) *Device {
	if cfg.StarvationGuard <= 0 {
		cfg.StarvationGuard = DefaultStarvationGuard
	}
	if cfg.MaxWaiters <= 0 {
		cfg.MaxWaiters = DefaultMaxWaiters
	}
	if cfg.ReclaimTimeout <= 0 {
		cfg.ReclaimTimeout = DefaultReclaimTimeout
	}
	if cfg.ReclaimTolerance <= 0 {
		cfg.ReclaimTolerance = DefaultReclaimTolerance
	}
	d := &Device{
		cfg:        cfg,
		lastOther:  -1,
		id:         cfg.ID,
		index:      cfg.Info.Index,
		backend:    cfg.Backend,
		allocs:     map[uuid.UUID]*allocation{},
		order:      newIndex(),
		byRequest:  map[originKey]*allocation{},
		purposes:   names{},
		modelNames: names{},
		tenants:    map[string]*tenantFigures{},
		history:    newHistory(),
		lastExpire: cfg.Start,
	}
	d.pools[device.VRAM] = vramPool(cfg.Backend, d.index, cfg.Info.TotalBytes, cfg.MapPiece)
	var pinned alloc.Source = source{b: cfg.Backend, dev: d.index, kind: device.Pinned}
	if cfg.Pinned != nil {
		pinned = cfg.Pinned
	}
	d.pools[device.Pinned] = alloc.New(pinned)
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
	switch t {
	case subjects.Pinned:
		return device.Pinned
	case subjects.Reservation:
		return kindNone
	}
	return device.VRAM
}

func (d *Device) loc(a *allocation) device.Location {
	return device.Location{Device: d.index, Kind: a.kind, Addr: a.block.Addr()}
}

// get finds an entry by its id as the client spells it.
func (d *Device) get(id string) (*allocation, bool) {
	u, ok := parseID(id)
	if !ok {
		return nil, false
	}
	a, ok := d.allocs[u]
	return a, ok
}

// Locate tells where an allocation's bytes are and how many there are. The
// location is valid until the allocation is moved, transferred or freed.
func (d *Device) Locate(id string) (device.Location, int64, error) {
	a, ok := d.get(id)
	if !ok {
		return device.Location{}, 0, fmt.Errorf("allocation %s on %s: %w", id, d.id, ErrAllocationNotFound)
	}
	if a.reservation() {
		return device.Location{}, 0, Errorf(ErrUnsupported, "allocation %s is a reservation: its memory is its process's", id)
	}
	return d.loc(a), a.size, nil
}

// Find says whether who may see allocation id: ErrAllocationNotFound,
// exactly as for an unknown id, when not.
func (d *Device) Find(id string, who Who) error {
	if a, ok := d.get(id); ok && a.visibleTo(who) {
		return nil
	}
	return fmt.Errorf("allocation %s on %s: %w", id, d.id, ErrAllocationNotFound)
}

// account adds (sign 1) or removes (sign -1) what a holds in VRAM to or
// from its purpose's and model's figures. Every change of an entry's kind
// or block is bracketed by the two.
func (d *Device) account(a *allocation, sign int) {
	if a.kind != device.VRAM {
		return
	}
	d.purposes.vramDelta(a.purpose, a.reserved(), sign)
	if a.model != "" {
		d.modelNames.vramDelta(a.model, a.reserved(), sign)
	}
}

// add enters a new entry, its names interned, in the ledger.
func (d *Device) add(a *allocation) {
	a.purpose = d.purposes.intern(a.purpose)
	if a.model != "" {
		a.model = d.modelNames.intern(a.model)
	}
	d.allocs[a.id] = a
	d.leaseSet(a)
	d.order.ReplaceOrInsert(a)
	if o := a.origin(); o.RequestID != "" {
		d.byRequest[o.key()] = a
	}
	d.byType[a.typ]++
	f := d.tenants[a.tenant]
	if f == nil {
		f = &tenantFigures{}
		d.tenants[a.tenant] = f
	}
	if a.allocType() != subjects.Pinned {
		f.requested += a.size
	}
	f.allocations++
	d.account(a, 1)
	d.history.events.push(memEvent{at: time.Unix(0, a.created), bytes: a.reserved(), alloc: true})
}

// freeBlock returns a block to its pool; with a host pool, an emptied
// pinned segment goes back to it.
func (d *Device) freeBlock(kind device.Kind, b *alloc.Block) error {
	if err := d.pools[kind].Free(b); err != nil {
		return err
	}
	if kind == device.Pinned && d.cfg.Pinned != nil {
		if _, _, err := d.pools[kind].Release(context.Background()); err != nil {
			return fmt.Errorf("returning pinned memory to the host pool: %w", err)
		}
	}
	return nil
}

// free returns a ledger entry's block to its pool and forgets it. An error
// means the ledger and the pool disagree: a bug, never input; the entry
// stays so the disagreement remains visible.
func (d *Device) free(a *allocation) error {
	if d.allocs[a.id] != a { // freed already: counting it out twice would corrupt every figure
		return fmt.Errorf("ledger entry %s is not in the ledger (freed twice)", a.idString())
	}
	bytes := a.reserved()
	if !a.reservation() {
		if err := d.freeBlock(a.kind, a.block); err != nil {
			// %v: the pool's reason is no client's mistake (an internal error)
			return fmt.Errorf("ledger entry %s is not allocated in its pool: %v", a.idString(), err)
		}
	}
	d.account(a, -1)
	d.forget(a)
	d.repayAll(a)
	delete(d.allocs, a.id)
	d.order.Delete(a)
	if o := a.origin(); o.RequestID != "" {
		delete(d.byRequest, o.key())
	}
	d.byType[a.typ]--
	if f := d.tenants[a.tenant]; f != nil {
		if a.allocType() != subjects.Pinned {
			f.requested -= a.size
		}
		if f.allocations--; f.allocations == 0 {
			delete(d.tenants, a.tenant)
		}
	}
	d.purposes.release(a.purpose)
	if a.model != "" {
		d.modelNames.release(a.model)
	}
	d.history.events.push(memEvent{at: time.Now(), bytes: bytes})
	return nil
}

// Audit checks that the ledger and the pools agree: every kind's pool has
// handed out exactly the bytes the ledger's entries hold; and that the
// index and the figures by name agree with the entries.
func (d *Device) Audit() error {
	var held [2]int64
	vram := map[string]int64{}
	for _, a := range d.allocs {
		if a.reservation() {
			continue
		}
		held[a.kind] += a.reserved()
		if a.kind == device.VRAM {
			vram[a.purpose] += a.reserved()
		}
	}
	for k, p := range d.pools {
		if s := p.Stats(); s.AllocatedBytes != held[k] {
			return fmt.Errorf("%s %v: the ledger holds %d bytes, the pool says %d are allocated", d.id, device.Kind(k), held[k], s.AllocatedBytes)
		}
	}
	if d.order.Len() != len(d.allocs) || d.byType[0]+d.byType[1]+d.byType[2] != len(d.allocs) {
		return fmt.Errorf("%s: %d entries, %d in the index, %v by type", d.id, len(d.allocs), d.order.Len(), d.byType)
	}
	for p, n := range d.purposes {
		if n.vramBytes != vram[p] {
			return fmt.Errorf("%s: purpose %q holds %d bytes of VRAM, its figure says %d", d.id, p, vram[p], n.vramBytes)
		}
	}
	if err := d.auditLoans(); err != nil {
		return err
	}
	return d.auditTenants()
}

// auditTenants checks each tenant's figures (what quotas are decided on)
// against its entries.
func (d *Device) auditTenants() error {
	held := map[string]tenantFigures{}
	for _, a := range d.allocs {
		f := held[a.tenant]
		if a.allocType() != subjects.Pinned {
			f.requested += a.size
		}
		f.allocations++
		held[a.tenant] = f
	}
	for t, f := range d.tenants {
		if held[t] != *f {
			return fmt.Errorf("%s: tenant %q holds %+v, its figures say %+v", d.id, t, held[t], *f)
		}
	}
	if len(held) != len(d.tenants) {
		return fmt.Errorf("%s: %d tenants hold entries, %d have figures", d.id, len(held), len(d.tenants))
	}
	return nil
}

// sorted lists the ledger's entries by id.
func (d *Device) sorted() []*allocation {
	out := make([]*allocation, 0, len(d.allocs))
	d.order.Ascend(func(a *allocation) bool {
		out = append(out, a)
		return true
	})
	return out
}
