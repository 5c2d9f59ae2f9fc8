package ledger

// LeaseHeapLen is how many entries d's heap of lease expiries holds
// (tests).
func LeaseHeapLen(d *Device) int { return len(d.leases) }
