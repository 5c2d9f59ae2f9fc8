package worker

import (
	"context"

	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// Backend is a host's GPU memory as the worker uses it: what each device's
// ledger calls, and device discovery. Errors wrap the kinds of package
// device. Optional abilities are ledger.Exporter and ledger.ProcessLister.
type Backend interface {
	ledger.Backend
	Devices(ctx context.Context) ([]device.Info, error)
}
