package subjects

import "fmt"

// Code is a stable wire error code, sent in error_code and in micro's
// Nats-Service-Error header.
type Code string

// The error codes. They never change meaning; new ones may be added.
const (
	CodeInvalidRequest     Code = "INVALID_REQUEST"
	CodeUnknownAction      Code = "UNKNOWN_ACTION"
	CodeDeviceNotFound     Code = "DEVICE_NOT_FOUND"
	CodeAllocationNotFound Code = "ALLOCATION_NOT_FOUND"
	CodeTransferNotFound   Code = "TRANSFER_NOT_FOUND"
	CodeOutOfMemory        Code = "OUT_OF_MEMORY"
	CodeConflict           Code = "CONFLICT"
	CodeUnsupported        Code = "UNSUPPORTED"
	CodeDeviceUnavailable  Code = "DEVICE_UNAVAILABLE"
	CodeInternal           Code = "INTERNAL_ERROR"
	// CodeForbidden: a tenant asked for an operator-only operation.
	CodeForbidden Code = "FORBIDDEN"
	// CodeQuotaExceeded: the tenant's quota on the device would be passed.
	CodeQuotaExceeded Code = "QUOTA_EXCEEDED"
	// CodeOverloaded: a queue or limit is full (waiters, a tenant's
	// transfers), or the worker grants no memory until it renews its
	// node's lease: retry later, after retry_after_ms. Never a failed
	// device (that is DEVICE_UNAVAILABLE).
	CodeOverloaded Code = "OVERLOADED"
)

// Status is the numeric code sent in micro's Nats-Service-Error-Code header,
// modelled on HTTP status codes.
func (c Code) Status() int {
	switch c {
	case CodeInvalidRequest, CodeUnknownAction, CodeUnsupported:
		return 400
	case CodeDeviceNotFound, CodeAllocationNotFound, CodeTransferNotFound:
		return 404
	case CodeForbidden, CodeQuotaExceeded:
		return 403
	case CodeConflict:
		return 409
	case CodeDeviceUnavailable, CodeOverloaded:
		return 503
	case CodeOutOfMemory:
		return 507
	default:
		return 500
	}
}

// Error is an error as it travels on the wire: a code and a message. Request
// decoding and validation return it with CodeInvalidRequest; Response.Err
// returns it for failed replies.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Invalid builds an INVALID_REQUEST error.
func Invalid(format string, args ...any) *Error {
	return &Error{Code: CodeInvalidRequest, Message: fmt.Sprintf(format, args...)}
}
