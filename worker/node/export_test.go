package node

// LeaseValue is what l writes in its key.
func LeaseValue(l *Lease) []byte { return l.value }
