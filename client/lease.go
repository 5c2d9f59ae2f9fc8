package client

import (
	"context"
	"time"

	"github.com/memworker/memworker/subjects"
)

// KeepAlive renews the leases ids on deviceID every third of ttl until ctx
// ends, each time for ttl: a client that stops (or dies) stops renewing,
// and the worker frees the memory when the lease runs out. It returns at
// once; renewals that fail are sent on the returned channel (which is
// closed when ctx ends), and the next renewal is tried all the same.
func (c *Client) KeepAlive(ctx context.Context, deviceID string, ttl time.Duration, ids ...string) <-chan error {
	errs := make(chan error, 1)
	go func() {
		defer close(errs)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			req := subjects.RenewRequest{AllocationIDs: ids, TTLSeconds: ttl.Seconds()}
			if _, err := c.Do(ctx, subjects.Renew, deviceID, req, nil); err != nil && ctx.Err() == nil {
				select {
				case errs <- err:
				default: // the caller is not reading: keep the first
				}
			}
		}
	}()
	return errs
}
