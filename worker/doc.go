// Package worker is the memworker service: it owns a host's devices through
// a Backend, keeps a pooling allocator and a ledger of allocations per
// device, and serves the memory operations of package subjects over NATS
// with the micro framework, one endpoint per operation and device, in the
// device's queue group.
package worker
