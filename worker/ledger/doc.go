// Package ledger is one device's memory state and every operation on one
// device, as plain Go: the pooling allocators (VRAM and pinned host), the
// ledger of allocations, models, history and analytics, recommendations,
// cached readings of device truth and telemetry, and the pressure tracker.
//
// A Device knows no NATS and takes no lock: like alloc.Pool it is not safe
// for concurrent use, and its owner (package worker) serialises calls, one
// mutex per device. Operations return plain values and error kinds of this
// package (ErrAllocationNotFound, ErrConflict, ...) or of package device;
// the worker maps them to wire codes in one place.
//
// Observing pressure is a call of its own (Observe): it returns the
// pressure and whether the level changed, and the caller announces a change.
package ledger
