// Package worker is the memworker service's NATS shell: it owns a host's
// devices through a Backend and serves the memory operations of package
// subjects over NATS with the micro framework, one endpoint per operation
// and device, in the device's queue group.
//
// Each device's state and operations are a ledger.Device (package
// worker/ledger), plain Go behind the device's mutex. This package decodes,
// serialises, calls the ledger, checks pressure after every mutation and
// announces level changes as CloudEvents, replies (errors mapped to wire
// codes in wireError, the only place), and runs what outlives a request:
// transfer jobs, the sampler, lease expiry and the event pump. See
// docs/design.md for the path of one request.
package worker
