package ledger

import (
	"errors"
	"fmt"
)

// Error kinds of the ledger. Backends' kinds are in package device.
var (
	ErrAllocationNotFound = errors.New("allocation not found")
	ErrTransferNotFound   = errors.New("transfer not found")
	ErrDeviceNotFound     = errors.New("device not found")
	ErrConflict           = errors.New("conflict")
	ErrUnsupported        = errors.New("unsupported")
	// ErrForbidden: a tenant asked for what only the operator may do.
	ErrForbidden = errors.New("forbidden")
	// ErrQuotaExceeded: the allocation would pass the tenant's quota.
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrInvalid: the request is well formed but cannot mean anything on
	// this device (moving an allocation to where it is, say).
	ErrInvalid = errors.New("invalid request")
	// ErrOverloaded: a queue or limit is full (waiters, a tenant's
	// transfers); the request may be retried later.
	ErrOverloaded = errors.New("overloaded")
	// ErrPaused: the device grants no memory for now (its node's lease
	// cannot be confirmed); the request may wait or be retried.
	ErrPaused = errors.New("paused")
)

// kindError is an error of a kind whose message says it all: the kind is
// for errors.Is, the message is what the client reads.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// Errorf returns an error of kind with the formatted message alone (no
// ": <kind>" suffix), for messages that name the problem themselves.
func Errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}
