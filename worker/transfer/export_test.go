package transfer

import "time"

// SetPausedRetry changes how long a job refused by a closed door waits
// before it asks again without a signal, and returns a func that puts it
// back.
func SetPausedRetry(d time.Duration) func() {
	old := pausedRetryOpened
	pausedRetryOpened = d
	return func() { pausedRetryOpened = old }
}
