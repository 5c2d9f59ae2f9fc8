package subjects

import (
	"encoding/json"
	"slices"
)

// fleetOps are the read operations served on memory.<op>.all.
var fleetOps = []Op{GetStatus, GetUsage, GetAllocations, GetPressure, Analytics, OptimizationRecs, ModelStatus}

// FleetOps returns the operations every node answers on memory.<op>.all.
func FleetOps() []Op { return append([]Op(nil), fleetOps...) }

// Fleet reports whether op is served on memory.<op>.all.
func (op Op) Fleet() bool { return slices.Contains(fleetOps, op) }

// NodeLeaseBucket is the JetStream key-value bucket in which the worker
// serving each node holds that node's lease: one key per node, its name,
// living 3 s after its last renewal and deleted when the worker stops.
// A worker holds one when its events are kept in JetStream; one run with
// --no-event-stream answers fleet requests without a key.
const NodeLeaseBucket = "memworker_nodes"

// FleetReply is one node's answer to a fleet request: the op's reply for
// each of its devices, or that device's error. The request's data applies
// to every device (limits and pages are per device).
type FleetReply struct {
	Node     string        `json:"node"`
	Instance string        `json:"instance"`
	Devices  []FleetDevice `json:"devices"`
}

// FleetDevice is one device's part of a FleetReply.
type FleetDevice struct {
	DeviceID     string          `json:"device_id"`
	Success      bool            `json:"success"`
	Data         json.RawMessage `json:"data,omitempty"`
	ErrorCode    Code            `json:"error_code,omitempty"`
	ErrorMessage string          `json:"error_message,omitempty"`
}
