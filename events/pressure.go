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
	DeviceID      string         `json:"device_id"`
	Node          string         `json:"node"`
	Reason        string         `json:"reason"`
	Level         subjects.Level `json:"level"`
	PreviousLevel subjects.Level `json:"previous_level,omitempty"`
	UsageRatio    float64        `json:"usage_ratio"`
	// PressureRatio and the bytes below are get_usage's figures of the
	// same names; the level follows PressureRatio.
	PressureRatio          float64 `json:"pressure_ratio"`
	AvailableBytes         int64   `json:"available_bytes"`
	ReclaimableBytes       int64   `json:"reclaimable_bytes"`
	ReservationUnusedBytes int64   `json:"reservation_unused_bytes"`
	WaitingBytes           int64   `json:"waiting_bytes"`
	// ReleasedBytes is what the worker returned to the device on its own
	// (auto-release) since the previous event, because device truth
	// crossed the warning threshold.
	ReleasedBytes     int64   `json:"released_bytes"`
	UsedBytes         int64   `json:"used_bytes"`
	FreeBytes         int64   `json:"free_bytes"`
	TotalBytes        int64   `json:"total_bytes"`
	WarningThreshold  float64 `json:"warning_threshold"`
	CriticalThreshold float64 `json:"critical_threshold"`
	// TopConsumers are the largest users of the device's memory known to
	// the worker: by model and by purpose, then other processes.
	TopConsumers []Consumer `json:"top_consumers"`
	ObservedAt   time.Time  `json:"observed_at"`
}

// Consumer kinds.
const (
	ConsumerModel   = "model"
	ConsumerPurpose = "purpose"
	ConsumerOther   = "other_processes"
	// Once tenants hold memory on the device, events (which reach every
	// tenant) name tenants and the pool's cache instead of models and
	// purposes.
	ConsumerTenant = "tenant"
	ConsumerCache  = "cache"
)

// Consumer is one user of device memory.
type Consumer struct {
	Kind  string `json:"kind"`
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
}

// Source is the CloudEvents source of a device's events.
func Source(node, deviceID string) string { return "/memworker/" + node + "/" + deviceID }
