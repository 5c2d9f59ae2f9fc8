package sim

import "time"

// SetExternalUsage makes dev report bytes of memory used by other processes.
func (b *Backend) SetExternalUsage(dev int, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.devices[dev].external = bytes
}

// FailAllocs makes the next n segment allocations on dev fail with
// device.ErrOutOfMemory.
func (b *Backend) FailAllocs(dev, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.devices[dev].failAllocs = n
}

// SetUnavailable makes dev fail every call but Free with
// device.ErrUnavailable, as a device that fell off the bus.
func (b *Backend) SetUnavailable(dev int, unavailable bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.devices[dev].unavailable = unavailable
}

// SetCopyDelay makes every Copy wait d first, as a slow link would.
func (b *Backend) SetCopyDelay(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.copyDelay = d
}
