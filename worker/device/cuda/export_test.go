//go:build cuda

package cuda

// HostRegister is hostRegister, for the page-locking probe.
var HostRegister = hostRegister

// HostUnregister is hostUnregister, for the page-locking probe.
var HostUnregister = hostUnregister
