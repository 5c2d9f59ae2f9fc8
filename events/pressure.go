package events

import (
	"time"

	"github.com/memworker/memworker/subjects"
)

// TypePressure is the type of pressure events. The version suffix changes
// only when the data changes incompatibly.
const TypePressure = "io.memworker.memory.pressure.v1"

// Reasons a pressure event is sent.
const (
	// ReasonStartup: the worker started serving the device.
	ReasonStartup = "startup"
	// ReasonChanged: the level changed.
	ReasonChanged = "changed"
	// ReasonRepeat: the device is still critical (sent at an interval so
	// late subscribers learn).
	ReasonRepeat = "repeat"
	// ReasonUnavailable: the device stopped answering; Level is the last
	// known one and the byte counts are unknown (zero).
	ReasonUnavailable = "unavailable"
	// ReasonAvailable: the device answers again.
	ReasonAvailable = "available"
)

// Pressure is the data of a pressure event.
type Pressure struct {
	subjects.PressureFigures
	Node   string `json:"node"`
	Reason string `json:"reason"`
	// ReleasedBytes is what the worker returned to the device on its own
	// (auto-release) since the previous event, because device truth
	// crossed the warning threshold.
	ReleasedBytes int64 `json:"released_bytes"`
	// TopConsumers are the largest users of the device's memory known to
	// the worker: by model and by purpose, then other processes (once
	// tenants hold memory: by tenant, then other processes and the cache).
	TopConsumers []subjects.Consumer `json:"top_consumers"`
	ObservedAt   time.Time           `json:"observed_at"`
}

// Source is the CloudEvents source of a device's events.
func Source(node, deviceID string) string { return "/memworker/" + node + "/" + deviceID }
