package subjects

import (
	"fmt"
	"strings"
)

// Root is the first token of every memworker subject.
const Root = "memory"

// Fleet is the device token that addresses every device of every node.
const Fleet = "all"

// pressureToken is the op position token of pressure event subjects. It is
// not an Op, so pressure events can never be mistaken for requests.
const pressureToken = "pressure"

// Request is the subject on which op is served for one device:
// memory.<op>.<device_id>.
func Request(op Op, deviceID string) string {
	return Root + "." + string(op) + "." + deviceID
}

// FleetRequest is the subject on which every node answers op for all its
// devices: memory.<op>.all.
func FleetRequest(op Op) string { return Request(op, Fleet) }

// PressureEvents is the subject of a device's pressure events:
// memory.pressure.<device_id>.
func PressureEvents(deviceID string) string {
	return Root + "." + pressureToken + "." + deviceID
}

// allocationToken is the op position token of allocation event subjects
// (a lease expired, a reservation exceeded).
const allocationToken = "allocation"

// OperatorToken is the tenant token of the operator's own allocation
// events (allocations made by the worker's own account).
const OperatorToken = "_"

// AllocationEvents is the subject of the allocation events of a tenant's
// allocations on a device: memory.allocation.<device_id>.<tenant>, the
// operator's under OperatorToken. A tenant whose account name is not a
// subject token has its events under OperatorToken: only operators see
// them.
func AllocationEvents(deviceID, tenant string) string {
	if tenant == "" || !ValidToken(tenant) || tenant == OperatorToken {
		tenant = OperatorToken
	}
	return Root + "." + allocationToken + "." + deviceID + "." + tenant
}

// HolderPrefix starts the subjects holders listen on for the worker's
// asks. A tenant's holders listen under HolderSubjects(tenant), which its
// account exports to the worker's.
const HolderPrefix = "holders."

// HolderSubjects matches the subjects a tenant's holders may listen on:
// holders.<tenant>.>.
func HolderSubjects(tenant string) string { return HolderPrefix + tenant + ".>" }

// TenantAllocationEvents matches the allocation events of a tenant's
// allocations on every device: what its account imports.
func TenantAllocationEvents(tenant string) string {
	return Root + "." + allocationToken + ".*." + tenant
}

// AllAllocationEvents matches the allocation events of every device.
const AllAllocationEvents = Root + "." + allocationToken + ".>"

// DeviceAllocationEvents matches the allocation events of one device, every
// tenant's.
func DeviceAllocationEvents(deviceID string) string {
	return Root + "." + allocationToken + "." + deviceID + ".>"
}

// IsAllocationEvent reports whether subject is an allocation event's.
func IsAllocationEvent(subject string) bool {
	return strings.HasPrefix(subject, Root+"."+allocationToken+".")
}

// AllPressureEvents matches the pressure events of every device.
const AllPressureEvents = Root + "." + pressureToken + ".>"

// lifecycleToken is the op position token of lifecycle event subjects.
const lifecycleToken = "lifecycle"

// LifecycleEvents is the subject of a node's worker lifecycle events
// (started, stopped): memory.lifecycle.<node>.
func LifecycleEvents(node string) string { return Root + "." + lifecycleToken + "." + node }

// AllLifecycleEvents matches the lifecycle events of every node.
const AllLifecycleEvents = Root + "." + lifecycleToken + ".>"

// QueueGroup is the queue group of a device's request subscriptions, shared
// by every worker (active or standby) serving that device.
func QueueGroup(deviceID string) string { return "memory-" + deviceID }

// NodeQueueGroup is the queue group of a node's fleet subscriptions, so a
// node answers a fleet request once.
func NodeQueueGroup(node string) string { return "memory-node-" + node }

// DeviceID is the default device id of the GPU at index on node:
// <node>-gpu<index>.
func DeviceID(node string, index int) string {
	return fmt.Sprintf("%s-gpu%d", node, index)
}

// MaxTokenLen bounds node names and device ids.
const MaxTokenLen = 128

// ValidToken reports whether s can be a node name or device id: 1 to
// MaxTokenLen characters of [A-Za-z0-9_-], and not the reserved "all".
func ValidToken(s string) bool {
	if s == "" || len(s) > MaxTokenLen || s == Fleet {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenByte(s[i]) {
			return false
		}
	}
	return true
}

func tokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// SanitizeNode turns a host name into a valid node token: characters outside
// [A-Za-z0-9_-] become '-', the name is cut at the first dot (the short host
// name) and at MaxTokenLen. An empty result becomes "node".
func SanitizeNode(host string) string {
	if i := strings.IndexByte(host, '.'); i >= 0 {
		host = host[:i]
	}
	b := []byte(host)
	for i, c := range b {
		if !tokenByte(c) {
			b[i] = '-'
		}
	}
	s := string(b)
	if len(s) > MaxTokenLen {
		s = s[:MaxTokenLen]
	}
	if s == "" || s == Fleet {
		return "node"
	}
	return s
}

// Parse splits a request subject into its op and device token (a device id
// or Fleet). It rejects pressure subjects, unknown ops and bad tokens.
func Parse(subject string) (op Op, deviceID string, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 3 || parts[0] != Root {
		return "", "", fmt.Errorf("subject %q is not memory.<op>.<device_id>", subject)
	}
	op = Op(parts[1])
	if !op.Valid() {
		return "", "", fmt.Errorf("subject %q names no operation", subject)
	}
	if parts[2] != Fleet && !ValidToken(parts[2]) {
		return "", "", fmt.Errorf("subject %q has an invalid device id", subject)
	}
	return op, parts[2], nil
}
