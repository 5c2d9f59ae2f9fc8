package subjects

// Payloads are the types an op's data carries: in its request, and in a
// success reply. The machine-readable contract (package contract, which
// writes docs/asyncapi.yaml) is generated from them.
func (op Op) Payloads() (request, reply any) {
	switch op {
	case GetStatus:
		return StatusRequest{}, StatusReply{}
	case GetUsage:
		return UsageRequest{}, Usage{}
	case GetAllocations:
		return AllocationsRequest{}, AllocationsReply{}
	case Allocate:
		return AllocateRequest{}, Allocation{}
	case Deallocate:
		return DeallocateRequest{}, DeallocateReply{}
	case Clear:
		return ClearRequest{}, ClearReply{}
	case Defragment:
		return DefragmentRequest{}, DefragmentReply{}
	case Transfer:
		return TransferRequest{}, TransferStatus{}
	case GetTransfer:
		return GetTransferRequest{}, TransferStatus{}
	case Optimize:
		return OptimizeRequest{}, OptimizeReply{}
	case ModelStatus:
		return ModelStatusRequest{}, ModelStatusReply{}
	case ModelOptimize:
		return ModelOptimizeRequest{}, ModelOptimizeReply{}
	case GetPressure:
		return PressureRequest{}, Pressure{}
	case Analytics:
		return AnalyticsRequest{}, AnalyticsReply{}
	case OptimizationRecs:
		return OptimizationRecsRequest{}, OptimizationRecsReply{}
	case Renew:
		return RenewRequest{}, RenewReply{}
	case Resize:
		return ResizeRequest{}, Allocation{}
	}
	return nil, nil
}

// AllocationTypes are the values of allocation_type.
func AllocationTypes() []AllocationType { return []AllocationType{VRAM, Pinned, Reservation} }

// Levels are the pressure levels, lowest first.
func Levels() []Level { return []Level{LevelNormal, LevelWarning, LevelCritical} }

// Codes are the error codes.
func Codes() []Code {
	return []Code{CodeInvalidRequest, CodeUnknownAction, CodeDeviceNotFound, CodeAllocationNotFound,
		CodeTransferNotFound, CodeOutOfMemory, CodeConflict, CodeUnsupported, CodeDeviceUnavailable,
		CodeInternal, CodeForbidden, CodeQuotaExceeded, CodeOverloaded}
}

// ContractPath is where the machine-readable contract (AsyncAPI 3.0.0)
// lives in the repository; the micro endpoints' metadata point into it.
const ContractPath = "docs/asyncapi.yaml"

// RequestSchema, ReplySchema and FleetReplySchema name op's request
// envelope, success reply envelope and fleet reply envelope among the
// contract's component schemas.
func (op Op) RequestSchema() string { return op.pascal() + "RequestEnvelope" }

// ReplySchema names op's success reply envelope.
func (op Op) ReplySchema() string { return op.pascal() + "ReplyEnvelope" }

// FleetReplySchema names op's fleet reply envelope.
func (op Op) FleetReplySchema() string { return op.pascal() + "FleetReplyEnvelope" }

// SchemaRef is the reference of a component schema of the contract.
func SchemaRef(name string) string { return ContractPath + "#/components/schemas/" + name }

// pascal is the op's name in PascalCase: get_status -> GetStatus.
func (op Op) pascal() string {
	var b []byte
	up := true
	for i := 0; i < len(op); i++ {
		c := op[i]
		switch {
		case c == '_':
			up = true
			continue
		case up && c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		}
		up = false
		b = append(b, c)
	}
	return string(b)
}
