//go:build cuda

package cuda

// HostRegister is hostRegister, for the page-locking probe.
var HostRegister = hostRegister

// HostUnregister is hostUnregister, for the page-locking probe.
var HostUnregister = hostUnregister

// SetPinChunk changes the bytes one cuMemHostRegister locks, for segments
// made from now on, and returns the old size.
func SetPinChunk(n int64) int64 {
	old := pinChunk
	pinChunk = n
	return old
}
