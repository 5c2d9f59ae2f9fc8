package subjects

import "slices"

// Op names one memory operation. Its string is the token used in subjects
// (memory.<op>.<device_id>) and, prefixed with "memory.", in the envelope's
// action field.
type Op string

// The 15 operations of the seed, in catalogue order, renew, which extends
// leases, and resize.
const (
	GetStatus        Op = "get_status"
	GetUsage         Op = "get_usage"
	GetAllocations   Op = "get_allocations"
	Allocate         Op = "allocate"
	Deallocate       Op = "deallocate"
	Clear            Op = "clear"
	Defragment       Op = "defragment"
	Transfer         Op = "transfer"
	GetTransfer      Op = "get_transfer"
	Optimize         Op = "optimize"
	ModelStatus      Op = "model_status"
	ModelOptimize    Op = "model_optimize"
	GetPressure      Op = "get_pressure"
	Analytics        Op = "analytics"
	OptimizationRecs Op = "optimization_recs"
	Renew            Op = "renew"
	// Resize changes a RESERVATION's size: shrinking at once, growing
	// through the door like any grant.
	Resize Op = "resize"
)

var catalogue = []Op{
	GetStatus, GetUsage, GetAllocations, Allocate, Deallocate, Clear,
	Defragment, Transfer, GetTransfer, Optimize, ModelStatus, ModelOptimize,
	GetPressure, Analytics, OptimizationRecs, Renew, Resize,
}

// Traits of an operation, declared here once for the worker and clients.
type Traits struct {
	// Mutating: the operation changes memory, and is idempotent by
	// request_id.
	Mutating bool
	// OperatorOnly: it acts on every tenant's memory, so a tenant gets
	// FORBIDDEN.
	OperatorOnly bool
	// Bounded: it copies bytes while it holds the device, under the
	// worker's operation timeout.
	Bounded bool
	// MayWait: its reply may come later than the request is handled (an
	// allocate waiting for room).
	MayWait bool
}

var traits = map[Op]Traits{
	Allocate:      {Mutating: true, MayWait: true},
	Deallocate:    {Mutating: true},
	Clear:         {Mutating: true},
	Defragment:    {Mutating: true, OperatorOnly: true, Bounded: true},
	Transfer:      {Mutating: true},
	Optimize:      {Mutating: true, OperatorOnly: true, Bounded: true},
	ModelOptimize: {Mutating: true, Bounded: true},
	Renew:         {Mutating: true},
	Resize:        {Mutating: true, MayWait: true},
}

// Ops returns the catalogue of all operations, in a fresh slice.
func Ops() []Op { return append([]Op(nil), catalogue...) }

// Valid reports whether op is one of the catalogue's operations.
func (op Op) Valid() bool { return slices.Contains(catalogue, op) }

// Traits are op's traits.
func (op Op) Traits() Traits { return traits[op] }

// Mutating reports whether op changes memory (and so is idempotent by
// request_id).
func (op Op) Mutating() bool { return traits[op].Mutating }

// Action is the envelope action naming op, e.g. "memory.allocate".
func (op Op) Action() string { return actionPrefix + string(op) }

const actionPrefix = "memory."

// ParseAction turns an envelope action ("memory.allocate", or the bare
// "allocate") into an Op. ok is false when it names no operation.
func ParseAction(action string) (op Op, ok bool) {
	if len(action) > len(actionPrefix) && action[:len(actionPrefix)] == actionPrefix {
		action = action[len(actionPrefix):]
	}
	op = Op(action)
	return op, op.Valid()
}
