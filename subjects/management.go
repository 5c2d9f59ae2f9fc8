package subjects

import "time"

// DefragmentRequest is defragment's payload.
type DefragmentRequest struct {
	Target
}

// DefragmentReply reports a compaction of the device's pool: live blocks
// moved out of sparsely used segments (content preserved, allocation ids
// unchanged) so those segments could go back to the device.
type DefragmentReply struct {
	Before             Fragmentation `json:"before"`
	After              Fragmentation `json:"after"`
	BlocksMoved        int           `json:"blocks_moved"`
	BytesMoved         int64         `json:"bytes_moved"`
	SegmentsReleased   int           `json:"segments_released"`
	ReleasedBytes      int64         `json:"released_bytes"`
	UnmovedAllocations int           `json:"unmoved_allocations"`
	DurationSeconds    float64       `json:"duration_seconds"`
}

// Transfer modes.
const (
	ModeCopy = "copy"
	ModeMove = "move"
)

// TransferRequest is transfer's payload: copy or move an allocation to
// another device of this host (TargetDeviceID) or to pinned host memory
// (TargetAllocationType PINNED). The source allocation is named on the
// source device's subject.
type TransferRequest struct {
	Target
	AllocationID         string         `json:"allocation_id"`
	TargetDeviceID       string         `json:"target_device_id,omitempty"`       // default: the source device
	TargetAllocationType AllocationType `json:"target_allocation_type,omitempty"` // default VRAM
	Mode                 string         `json:"mode,omitempty"`                   // copy (default) or move
	Verify               bool           `json:"verify,omitempty"`                 // compare checksums of source and copy
}

// Transfer states.
const (
	TransferQueued    = "queued"
	TransferRunning   = "running"
	TransferCompleted = "completed"
	TransferFailed    = "failed"
)

// TransferStatus is the state of a transfer job, the reply of transfer and
// of get_transfer.
type TransferStatus struct {
	TransferID               string         `json:"transfer_id"`
	Status                   string         `json:"status"`
	Mode                     string         `json:"mode"`
	SourceDeviceID           string         `json:"source_device_id"`
	SourceAllocationID       string         `json:"source_allocation_id"`
	TargetDeviceID           string         `json:"target_device_id"`
	TargetAllocationType     AllocationType `json:"target_allocation_type"`
	DestinationAllocationID  string         `json:"destination_allocation_id,omitempty"`
	BytesTotal               int64          `json:"bytes_total"`
	BytesDone                int64          `json:"bytes_done"`
	ThroughputBytesPerSecond float64        `json:"throughput_bytes_per_second"`
	// The phases of a transfer: setup (reserving the destination), the copy,
	// and the verification left after the copy (checksums run alongside
	// it); copy throughput is bytes over copy seconds, the copy engine's
	// rate, where throughput_bytes_per_second runs from created_at.
	SetupSeconds                 float64    `json:"setup_seconds"`
	CopySeconds                  float64    `json:"copy_seconds"`
	VerifySeconds                float64    `json:"verify_seconds"`
	CopyThroughputBytesPerSecond float64    `json:"copy_throughput_bytes_per_second"`
	Verified                     bool       `json:"verified"`
	Checksum                     string     `json:"checksum,omitempty"`
	CreatedAt                    time.Time  `json:"created_at"`
	StartedAt                    *time.Time `json:"started_at,omitempty"`
	CompletedAt                  *time.Time `json:"completed_at,omitempty"`
	ErrorCode                    Code       `json:"error_code,omitempty"`
	ErrorMessage                 string     `json:"error_message,omitempty"`
}

// GetTransferRequest is get_transfer's payload, sent on the source device's
// subject.
type GetTransferRequest struct {
	Target
	TransferID string `json:"transfer_id"`
}

// Optimize strategies.
const (
	StrategyReleaseCached = "release_cached"
	StrategyDefragment    = "defragment"
	StrategyFreeExpired   = "free_expired"
	StrategyOffloadIdle   = "offload_idle"
)

// OptimizeRequest is optimize's payload. Strategies run in the order given
// (default: free_expired, release_cached, defragment); with a
// TargetUsagePercentage they stop once usage is at or below it. DryRun
// reports what would be done and does nothing.
type OptimizeRequest struct {
	Target
	Strategies            []string `json:"strategies,omitempty"`
	TargetUsagePercentage float64  `json:"target_usage_percentage,omitempty"`
	IdleSeconds           float64  `json:"idle_seconds,omitempty"` // offload_idle: default 300
	DryRun                bool     `json:"dry_run,omitempty"`
}

// OptimizeAction is one step optimize took or would take.
type OptimizeAction struct {
	Strategy      string   `json:"strategy"`
	Description   string   `json:"description"`
	BytesFreed    int64    `json:"bytes_freed"`
	AllocationIDs []string `json:"allocation_ids,omitempty"`
}

// OptimizeReply is optimize's reply. BytesFreed is device memory given back
// (or that would be).
type OptimizeReply struct {
	DryRun                bool             `json:"dry_run"`
	Actions               []OptimizeAction `json:"actions"`
	BytesFreed            int64            `json:"bytes_freed"`
	UsagePercentageBefore float64          `json:"usage_percentage_before"`
	UsagePercentageAfter  float64          `json:"usage_percentage_after"`
	TargetMet             bool             `json:"target_met"`
}

// ModelStatusRequest is model_status's payload; ModelID narrows it to one
// model.
type ModelStatusRequest struct {
	Target
	ModelID string `json:"model_id,omitempty"`
}

// ModelMemory is the memory of one model on one device.
type ModelMemory struct {
	ModelID  string `json:"model_id"`
	DeviceID string `json:"device_id"`
	// ResidentBytes is in VRAM; OffloadedBytes was moved to pinned host
	// memory by an offload; HostBytes is in pinned host memory by its own
	// type (PINNED allocations, copies made by transfer), not an offload.
	ResidentBytes         int64     `json:"resident_bytes"`
	OffloadedBytes        int64     `json:"offloaded_bytes"`
	HostBytes             int64     `json:"host_bytes"`
	Allocations           int       `json:"allocations"`
	PersistentAllocations int       `json:"persistent_allocations"`
	LastUsedAt            time.Time `json:"last_used_at"`
}

// ModelStatusReply is model_status's reply, models by id.
type ModelStatusReply struct {
	Models []ModelMemory `json:"models"`
}

// Model optimization types.
const (
	OptimizeOffload = "offload" // move model memory to pinned host memory
	OptimizeEvict   = "evict"   // free model memory
	OptimizeRestore = "restore" // bring offloaded model memory back to VRAM
)

// ModelOptimizeRequest is the seed's model_optimize request: offload or
// evict least recently used model memory until device usage is at or below
// TargetUsagePercentage; persistent allocations only with Force.
type ModelOptimizeRequest struct {
	Target
	OptimizationType      string   `json:"optimization_type"`
	TargetUsagePercentage *float64 `json:"target_usage_percentage"`
	Force                 bool     `json:"force,omitempty"`
	ModelID               string   `json:"model_id,omitempty"`
}

// ModelOptimizeReply is the seed's model_optimize response.
type ModelOptimizeReply struct {
	Success                  bool                `json:"success"`
	Message                  string              `json:"message"`
	OptimizationStarted      time.Time           `json:"optimization_started"`
	EstimatedDurationSeconds float64             `json:"estimated_duration_seconds"`
	MemoryFreedBytes         int64               `json:"memory_freed_bytes"`
	OptimizationDetails      OptimizationDetails `json:"optimization_details"`
	// The phases of an offload or restore, as get_transfer has them:
	// BytesMoved were copied; SetupSeconds went to reserving their
	// destinations, CopySeconds to copying, ReleaseSeconds to returning
	// the emptied device memory (offload). ThroughputBytesPerSecond is
	// BytesMoved over the whole request (EstimatedDurationSeconds, which
	// is the time it took), CopyThroughputBytesPerSecond over CopySeconds.
	BytesMoved                   int64   `json:"bytes_moved"`
	SetupSeconds                 float64 `json:"setup_seconds"`
	CopySeconds                  float64 `json:"copy_seconds"`
	ReleaseSeconds               float64 `json:"release_seconds"`
	ThroughputBytesPerSecond     float64 `json:"throughput_bytes_per_second"`
	CopyThroughputBytesPerSecond float64 `json:"copy_throughput_bytes_per_second"`
}

// OptimizationDetails says what model_optimize did.
type OptimizationDetails struct {
	OptimizationType      string        `json:"optimization_type"`
	UsagePercentageBefore float64       `json:"usage_percentage_before"`
	UsagePercentageAfter  float64       `json:"usage_percentage_after"`
	TargetUsagePercentage float64       `json:"target_usage_percentage"`
	TargetMet             bool          `json:"target_met"`
	Models                []ModelAction `json:"models"`
	// SkippedModels are the models left as they were, and why: a model is
	// moved whole or not at all.
	SkippedModels     []SkippedModel `json:"skipped_models"`
	SkippedPersistent int            `json:"skipped_persistent"`
}

// RenewRequest is renew's payload: leases to extend, all or nothing, each
// by ttl_seconds from now (default: its own ttl as given at allocate).
type RenewRequest struct {
	Target
	AllocationID  string   `json:"allocation_id,omitempty"`
	AllocationIDs []string `json:"allocation_ids,omitempty"`
	TTLSeconds    float64  `json:"ttl_seconds,omitempty"`
}

// RenewReply is renew's reply: each lease and when it now expires.
type RenewReply struct {
	Renewed []RenewedLease `json:"renewed"`
}

// RenewedLease is one renewed lease.
type RenewedLease struct {
	AllocationID string    `json:"allocation_id"`
	ExpiresAt    time.Time `json:"expires_at"`
}

// SkippedModel is a model model_optimize left as it was.
type SkippedModel struct {
	ModelID string `json:"model_id"`
	Reason  string `json:"reason"`
}

// ModelAction is what happened to one model's memory.
type ModelAction struct {
	ModelID       string   `json:"model_id"`
	Action        string   `json:"action"`
	Bytes         int64    `json:"bytes"`
	AllocationIDs []string `json:"allocation_ids"`
}
