package sim

import "time"

// SetExternalUsage makes dev report bytes of memory used by other processes.
func (b *Backend) SetExternalUsage(dev int, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.devices[dev].external = bytes
}

// SetProcess makes process pid use bytes of dev's memory, as a model server
// started beside the worker would; 0 ends the process. Its bytes count as
// other processes' use, and it shows in Processes under its pid.
func (b *Backend) SetProcess(dev, pid int, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.devices[dev]
	if d.procs == nil {
		d.procs = map[int]int64{}
	}
	if bytes <= 0 {
		delete(d.procs, pid)
		return
	}
	d.procs[pid] = bytes
}

// others is the memory of dev used outside the worker's segments.
func (d *simDevice) others() int64 {
	n := d.external
	for _, b := range d.procs {
		n += b
	}
	return n
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
