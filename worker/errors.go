package worker

import (
	"context"
	"errors"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/device"
	"github.com/memworker/memworker/worker/ledger"
)

// wireError maps any error to its wire code. It is the only place that
// does: the ledger, the backends and the shell return error kinds, request
// decoding returns *subjects.Error with its code.
func wireError(err error) *subjects.Error {
	var we *subjects.Error
	if errors.As(err, &we) {
		return &subjects.Error{Code: we.Code, Message: subjects.Clip(we.Message)}
	}
	code := subjects.CodeInternal
	switch {
	case errors.Is(err, ledger.ErrAllocationNotFound):
		code = subjects.CodeAllocationNotFound
	case errors.Is(err, ledger.ErrTransferNotFound):
		code = subjects.CodeTransferNotFound
	case errors.Is(err, ledger.ErrDeviceNotFound), errors.Is(err, device.ErrNotFound):
		code = subjects.CodeDeviceNotFound
	case errors.Is(err, ledger.ErrConflict):
		code = subjects.CodeConflict
	case errors.Is(err, ledger.ErrForbidden):
		code = subjects.CodeForbidden
	case errors.Is(err, ledger.ErrOverloaded), errors.Is(err, ledger.ErrPaused):
		code = subjects.CodeOverloaded
	case errors.Is(err, ledger.ErrQuotaExceeded):
		code = subjects.CodeQuotaExceeded
	case errors.Is(err, ledger.ErrUnsupported):
		code = subjects.CodeUnsupported
	case errors.Is(err, ledger.ErrInvalid), errors.Is(err, alloc.ErrInvalid):
		code = subjects.CodeInvalidRequest
	case errors.Is(err, device.ErrOutOfMemory):
		code = subjects.CodeOutOfMemory
	case errors.Is(err, device.ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// A device that failed or timed out, or a worker stopping.
		code = subjects.CodeDeviceUnavailable
	}
	return &subjects.Error{Code: code, Message: subjects.Clip(err.Error())}
}
