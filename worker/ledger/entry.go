package ledger

import (
	"bytes"
	"slices"
	"strings"
	"time"

	"github.com/google/btree"
	"github.com/google/uuid"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// allocation is a ledger entry, kept small because a device may hold a
// million of them: times as Unix nanoseconds, the id as its 16 bytes,
// purpose and model_id shared with every other entry of the same name,
// and what few allocations have
// (an IPC handle, the request that made it) in extra. view turns it into
// what the client sees.
type allocation struct {
	id        uuid.UUID
	size      int64 // as requested
	rsv       int64 // the block's size (kept: a freed block may merge)
	alignment int64
	created   int64
	lastUsed  int64
	expires   int64  // 0: no ttl
	ttl       int64  // the lease's ttl as given, for renew
	purpose   string // interned (names)
	model     string // interned (names)
	tenant    string // interned (the tenants' figures); "" for the operator
	block     *alloc.Block
	extra     *extra
	// busy counts transfers reading or writing the allocation: while it is
	// not zero the allocation is neither moved nor freed.
	busy  int32
	typ   uint8 // typeCodes
	kind  device.Kind
	flags uint8
}

// Flags of an allocation.
const (
	persistent uint8 = 1 << iota
	offloaded
	exported
	exceeded // a reservation's process uses more than it reserved
)

// kindNone is the kind of a reservation: memory the worker does not hold.
const kindNone device.Kind = -1

// extra is what few allocations carry.
type extra struct {
	ipcHandle string
	ipcOffset int64
	origin    madeBy
	user      string
	pid       int     // a reservation's process
	hold      *holder // a holder's standing
	loans     []loan  // room borrowed from released holders (owed.go)
}

// typeCodes are the allocation types by their code in an entry.
var typeCodes = []subjects.AllocationType{subjects.VRAM, subjects.Pinned, subjects.Reservation}

// reservationCode is the type code of reservations.
const reservationCode = 2

func (a *allocation) reservation() bool { return a.typ == reservationCode }

func (a *allocation) pid() int {
	if a.extra == nil {
		return 0
	}
	return a.extra.pid
}

func typeCode(t subjects.AllocationType) uint8 {
	return uint8(max(slices.Index(typeCodes, t), 0))
}

func (a *allocation) has(f uint8) bool { return a.flags&f != 0 }

func (a *allocation) set(f uint8, on bool) {
	if on {
		a.flags |= f
	} else {
		a.flags &^= f
	}
}

func (a *allocation) idString() string                   { return a.id.String() }
func (a *allocation) reserved() int64                    { return a.rsv }
func (a *allocation) allocType() subjects.AllocationType { return typeCodes[a.typ] }
func (a *allocation) lastUsedAt() time.Time              { return time.Unix(0, a.lastUsed).UTC() }

// expiredAt reports whether the allocation's ttl has passed at now.
func (a *allocation) expiredAt(now time.Time) bool {
	return a.expires != 0 && now.UnixNano() >= a.expires
}

func (a *allocation) origin() madeBy {
	if a.extra == nil {
		return madeBy{}
	}
	return a.extra.origin
}

// idle reports whether no transfer is using the allocation, so it may be
// freed.
func (a *allocation) idle() bool { return a.busy == 0 }

// relocatable reports whether the allocation's bytes may change place:
// idle, and not exported (another process maps its address).
func (a *allocation) relocatable() bool { return a.idle() && !a.has(exported) && !a.reservation() }

// view is the allocation as the client sees it.
func (d *Device) view(a *allocation) subjects.Allocation {
	v := subjects.Allocation{
		AllocationID:   a.idString(),
		DeviceID:       d.id,
		SizeBytes:      a.size,
		ReservedBytes:  a.reserved(),
		AllocationType: a.allocType(),
		Alignment:      a.alignment,
		Purpose:        a.purpose,
		ModelID:        a.model,
		Persistent:     a.has(persistent),
		CreatedAt:      time.Unix(0, a.created).UTC(),
		LastUsedAt:     a.lastUsedAt(),
		Offloaded:      a.has(offloaded),
		Exported:       a.has(exported),
	}
	if a.expires != 0 {
		exp := time.Unix(0, a.expires).UTC()
		v.ExpiresAt = &exp
	}
	if a.extra != nil {
		v.IPCHandle, v.IPCOffset, v.User = a.extra.ipcHandle, a.extra.ipcOffset, a.extra.user
	}
	v.Tenant = a.tenant
	if h := a.holding(); h != nil {
		spec := h.spec
		v.Reclaim, v.Priority, v.ReclaimState = &spec, h.priority, h.state
	}
	if a.reservation() {
		v.PID = a.pid()
		if obs, at, ok := d.observed(a.pid()); ok {
			v.ObservedBytes, v.ObservedAt = obs, at
		}
	}
	return v
}

// lessID orders entries by id: UUIDv7s, so by creation.
func lessID(a, b *allocation) bool { return bytes.Compare(a.id[:], b.id[:]) < 0 }

func newIndex() *btree.BTreeG[*allocation] { return btree.NewG(32, lessID) }

// parseID reads an allocation id; ok is false for anything that is not
// one (it is then in no ledger).
func parseID(s string) (uuid.UUID, bool) {
	id, err := uuid.Parse(s)
	return id, err == nil && len(s) == 36
}

// names counts the users of a purpose or model name, and how much VRAM
// they hold: the split by purpose and the consumers are read from it
// without walking the ledger, and entries share its string.
type names map[string]*name

type name struct {
	name      string
	entries   int   // every allocation of the name
	vram      int   // those resident in VRAM
	vramBytes int64 // their reserved bytes
}

// intern returns the shared copy of s, counting one more entry.
func (n names) intern(s string) string {
	e, ok := n[s]
	if !ok {
		e = &name{name: strings.Clone(s)}
		n[e.name] = e
	}
	e.entries++
	return e.name
}

// release counts one entry of s less. The empty name stays, to spare
// re-making it for the next allocation without a name.
func (n names) release(s string) {
	if e, ok := n[s]; ok {
		if e.entries--; e.entries == 0 && s != "" {
			delete(n, s)
		}
	}
}

// vramDelta adds (sign 1) or removes (sign -1) an entry's VRAM from s.
func (n names) vramDelta(s string, bytes int64, sign int) {
	if e, ok := n[s]; ok {
		e.vram += sign
		e.vramBytes += int64(sign) * bytes
	}
}

// entries is how many entries have the name s.
func (n names) entries(s string) int {
	if e, ok := n[s]; ok {
		return e.entries
	}
	return 0
}
