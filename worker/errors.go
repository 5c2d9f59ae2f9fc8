package worker

import (
	"context"
	"errors"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
)

// Error kinds of the worker's own; backends' kinds are in package device and
// request decoding's are *subjects.Error.
var (
	ErrAllocationNotFound = errors.New("allocation not found")
	ErrConflict           = errors.New("conflict")
	ErrUnsupported        = errors.New("unsupported")
)

// wireError maps any error to its wire code. It is the only place that does.
func wireError(err error) *subjects.Error {
	var we *subjects.Error
	if errors.As(err, &we) {
		return we
	}
	code := subjects.CodeInternal
	switch {
	case errors.Is(err, ErrAllocationNotFound):
		code = subjects.CodeAllocationNotFound
	case errors.Is(err, ErrConflict):
		code = subjects.CodeConflict
	case errors.Is(err, ErrUnsupported):
		code = subjects.CodeUnsupported
	case errors.Is(err, alloc.ErrInvalid):
		code = subjects.CodeInvalidRequest
	case errors.Is(err, device.ErrOutOfMemory):
		code = subjects.CodeOutOfMemory
	case errors.Is(err, device.ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// A device that failed or timed out, or a worker stopping.
		code = subjects.CodeDeviceUnavailable
	}
	return &subjects.Error{Code: code, Message: err.Error()}
}
