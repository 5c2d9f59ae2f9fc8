//go:build cuda

package cuda

import "sync"

// turns gives copies' driver calls precedence over page-locking, where
// pinTurns is on (an experiment, docs/h100/round3/coldparts): a
// cuMemHostRegister of a chunk runs for milliseconds, and a copy that
// waits to queue its next piece behind one after another leaves the copy
// engine idle. Page-locking does not run two at once here (the driver
// serialises it anyway); it waits while a copy queues, and a copy waits
// only for the one running.
type turns struct {
	mu      sync.Mutex
	cond    sync.Cond
	copies  int  // copies queueing pieces
	locking bool // a registration is running
}

// pinTurns turns turns on, for the probes that try it.
var pinTurns bool

var driverTurns = func() *turns {
	t := &turns{}
	t.cond.L = &t.mu
	return t
}()

// lock runs a registration in its turn.
func (t *turns) lock(f func() error) error {
	if !pinTurns {
		return f()
	}
	t.mu.Lock()
	for t.copies > 0 || t.locking {
		t.cond.Wait()
	}
	t.locking = true
	t.mu.Unlock()
	defer t.done(func() { t.locking = false })
	return f()
}

// queue runs a copy's driver calls before any registration waiting.
func (t *turns) queue(f func() error) error {
	if !pinTurns {
		return f()
	}
	t.mu.Lock()
	t.copies++
	for t.locking {
		t.cond.Wait()
	}
	t.mu.Unlock()
	defer t.done(func() { t.copies-- })
	return f()
}

func (t *turns) done(f func()) {
	t.mu.Lock()
	f()
	t.cond.Broadcast()
	t.mu.Unlock()
}
