package subjects

import "time"

// Target is embedded in every request payload. DeviceID is optional: the
// subject names the device, and when DeviceID is present it must match.
type Target struct {
	DeviceID string `json:"device_id,omitempty"`
}

// Device returns the device id the payload names, or "".
func (t Target) Device() string { return t.DeviceID }

// AllocationType says where an allocation lives.
type AllocationType string

// The allocation types of the seed.
const (
	// VRAM is device memory.
	VRAM AllocationType = "VRAM"
	// Pinned is page-locked host memory, for fast transfers to and from the
	// device.
	Pinned AllocationType = "PINNED"
	// Reservation holds device memory for another process (pid), which
	// allocates it itself: the worker allocates nothing, the bytes count
	// against admission, quotas and pressure until that process uses them.
	Reservation AllocationType = "RESERVATION"
)

// Allocation is one allocation as the worker tracks it.
type Allocation struct {
	AllocationID   string         `json:"allocation_id"`
	DeviceID       string         `json:"device_id"`
	SizeBytes      int64          `json:"size_bytes"`
	ReservedBytes  int64          `json:"reserved_bytes"`
	AllocationType AllocationType `json:"allocation_type"`
	Alignment      int64          `json:"alignment"`
	Purpose        string         `json:"purpose,omitempty"`
	ModelID        string         `json:"model_id,omitempty"`
	Persistent     bool           `json:"persistent"`
	CreatedAt      time.Time      `json:"created_at"`
	ExpiresAt      *time.Time     `json:"expires_at,omitempty"`
	// LastUsedAt is when the worker last did something with the
	// allocation: created, transferred, offloaded.
	LastUsedAt time.Time `json:"last_used_at"`
	// Offloaded is true when a VRAM allocation's bytes have been moved to
	// pinned host memory by optimize or model_optimize.
	Offloaded bool `json:"offloaded"`
	// Exported allocations have a segment of their own that other
	// processes of the host map with IPCHandle (a base64 CUDA IPC memory
	// handle; the allocation starts IPCOffset bytes into it). They are never
	// moved or offloaded.
	Exported  bool   `json:"exported"`
	IPCHandle string `json:"ipc_handle,omitempty"`
	IPCOffset int64  `json:"ipc_offset"`
	// WaitedSeconds is how long a granted allocate waited for room.
	WaitedSeconds float64 `json:"waited_seconds,omitempty"`
	// PID is the process a reservation is for; ObservedBytes what that
	// process uses of the device (NVML, or the sim), read at ObservedAt.
	PID           int        `json:"pid,omitempty"`
	ObservedBytes int64      `json:"observed_bytes,omitempty"`
	ObservedAt    *time.Time `json:"observed_at,omitempty"`
	// Tenant is the NATS account that made the allocation (absent for the
	// worker's own account), User its user when the account shares it.
	Tenant string `json:"tenant,omitempty"`
	User   string `json:"user,omitempty"`
	// Reclaim, Priority and ReclaimState are a holder's: how it is asked
	// to give memory back, its priority, and where it stands (held,
	// releasing, released).
	Reclaim      *Reclaim `json:"reclaim,omitempty"`
	Priority     int      `json:"priority,omitempty"`
	ReclaimState string   `json:"reclaim_state,omitempty"`
}

// Where a holder stands.
const (
	HolderHeld      = "held"
	HolderReleasing = "releasing"
	HolderReleased  = "released"
)

// StatusRequest is get_status's payload.
type StatusRequest struct {
	Target
	IncludeAllocations   bool  `json:"include_allocations,omitempty"`
	IncludeUsageStats    *bool `json:"include_usage_stats,omitempty"` // default true
	IncludeFragmentation bool  `json:"include_fragmentation,omitempty"`
}

// MaxStatusAllocations bounds the allocations get_status lists; use
// get_allocations to page through more.
const MaxStatusAllocations = 100

// StatusReply is get_status's reply.
type StatusReply struct {
	Device               DeviceInfo     `json:"device"`
	Usage                Usage          `json:"usage"`
	Pressure             Pressure       `json:"pressure"`
	AllocationCount      int            `json:"allocation_count"`
	Allocations          []Allocation   `json:"allocations,omitempty"`
	AllocationsTruncated bool           `json:"allocations_truncated,omitempty"`
	UsageStats           *PoolStats     `json:"usage_stats,omitempty"`
	Fragmentation        *Fragmentation `json:"fragmentation,omitempty"`
}

// DeviceInfo identifies a device.
type DeviceInfo struct {
	DeviceID          string `json:"device_id"`
	Node              string `json:"node"`
	Index             int    `json:"index"`
	Name              string `json:"name"`
	UUID              string `json:"uuid,omitempty"`
	Backend           string `json:"backend"`
	ComputeCapability string `json:"compute_capability,omitempty"`
	TotalBytes        int64  `json:"total_bytes"`
	// VirtualMemoryGranularityBytes is there when the device's VRAM pool is
	// on virtual memory (the worker's --vmm, where the driver has it): the
	// size of a chunk of physical memory, which it maps in pieces of a
	// power of two chunks. Absent: the pool holds cuMemAlloc segments.
	VirtualMemoryGranularityBytes int64 `json:"virtual_memory_granularity_bytes,omitempty"`
}

// UsageRequest is get_usage's payload.
type UsageRequest struct {
	Target
}

// Usage puts device truth (total, free, used, as the driver reports them,
// other processes included) beside the worker's own view.
type Usage struct {
	DeviceID string `json:"device_id"`
	// TotalBytes, FreeBytes and UsedBytes are device truth: the driver's
	// figures, read at most the worker's TruthMaxAge (1 ms) ago, with the
	// worker's own reservations since applied exactly.
	TotalBytes int64 `json:"total_bytes"`
	FreeBytes  int64 `json:"free_bytes"`
	UsedBytes  int64 `json:"used_bytes"`
	// ReservedBytes is what the worker's pool holds from the device;
	// AllocatedBytes the part of it handed out (after rounding);
	// RequestedBytes what callers asked for; CachedBytes = reserved -
	// allocated, free for reuse without asking the device.
	ReservedBytes  int64 `json:"reserved_bytes"`
	AllocatedBytes int64 `json:"allocated_bytes"`
	RequestedBytes int64 `json:"requested_bytes"`
	CachedBytes    int64 `json:"cached_bytes"`
	// OtherBytes is device memory used outside this worker's pool: other
	// processes and the driver's own reservations.
	OtherBytes int64 `json:"other_bytes"`
	// PinnedHostBytes is page-locked host memory held for this device.
	PinnedHostBytes int64 `json:"pinned_host_bytes"`
	// DriverReservedBytes and Processes come from NVML where the backend
	// has it: memory the driver keeps for itself, and every process using
	// the device with its bytes.
	// ProcessesSampledAt is when they were read: NVML is slow, so they are
	// read at most once a second (the worker's TelemetryMaxAge). It is
	// absent when the backend has no telemetry.
	DriverReservedBytes int64          `json:"driver_reserved_bytes,omitempty"`
	Processes           []ProcessUsage `json:"processes,omitempty"`
	ProcessesSampledAt  *time.Time     `json:"processes_sampled_at,omitempty"`
	Allocations         int            `json:"allocations"`
	UsageRatio          float64        `json:"usage_ratio"`
	UsagePercentage     float64        `json:"usage_percentage"`
	// ReclaimableBytes is what the worker holds from the device and no
	// allocation uses (its pool's cache): empty segments go back to the
	// device on demand, free blocks serve new allocations.
	// ReservationUnusedBytes is the part of reservations their processes
	// have not used yet: promised, so not available. WaitingBytes is what
	// queued allocate requests wait for.
	// AvailableBytes = FreeBytes + ReclaimableBytes -
	// ReservationUnusedBytes (never below 0): what a new allocation can get
	// now. PressureRatio = 1 - AvailableBytes / TotalBytes: the levels
	// follow it; UsageRatio stays device truth (UsedBytes / TotalBytes).
	ReclaimableBytes       int64   `json:"reclaimable_bytes"`
	ReservationUnusedBytes int64   `json:"reservation_unused_bytes"`
	WaitingBytes           int64   `json:"waiting_bytes"`
	WaitingRequests        int     `json:"waiting_requests"`
	AvailableBytes         int64   `json:"available_bytes"`
	PressureRatio          float64 `json:"pressure_ratio"`
	// ByPurpose splits allocated bytes by the purpose given at allocate.
	ByPurpose []PurposeUsage `json:"by_purpose"`
	// PinnedPool is the host's page-locked memory, shared by its devices.
	PinnedPool *PinnedPool `json:"pinned_pool,omitempty"`
	SampledAt  time.Time   `json:"sampled_at"`
}

// PinnedPool is the host's pool of page-locked memory, which offloads and
// transfers to the host copy into: kept and reused, so only the first use
// of memory pays for page-locking it.
type PinnedPool struct {
	// PinnedBytes is page-locked host memory the pool holds; InUseBytes
	// of it is handed out to allocations, CachedBytes is ready for the next.
	PinnedBytes int64 `json:"pinned_bytes"`
	InUseBytes  int64 `json:"in_use_bytes"`
	CachedBytes int64 `json:"cached_bytes"`
	// PrepinBytes was page-locked at start (--pinned-pool); MaxBytes caps
	// PinnedBytes (--pinned-max).
	PrepinBytes int64 `json:"prepin_bytes"`
	MaxBytes    int64 `json:"max_bytes"`
	// HitRatio is the share of requests for pinned memory served without
	// page-locking more.
	HitRatio float64 `json:"hit_ratio"`
	// AheadBytes is memory page-locked ahead of an offload that pressure
	// makes likely (--pinned-ahead), ready and not used yet.
	AheadBytes int64 `json:"ahead_bytes"`
}

// ProcessUsage is one process's use of a device.
type ProcessUsage struct {
	PID       int   `json:"pid"`
	UsedBytes int64 `json:"used_bytes"`
}

// PurposeUsage is the memory allocated for one purpose.
type PurposeUsage struct {
	Purpose        string `json:"purpose"`
	Allocations    int    `json:"allocations"`
	AllocatedBytes int64  `json:"allocated_bytes"`
}

// PoolStats describes the worker's pooling allocator for one device.
type PoolStats struct {
	AllocatedBytes     int64   `json:"allocated_bytes"`
	ReservedBytes      int64   `json:"reserved_bytes"`
	PeakAllocatedBytes int64   `json:"peak_allocated_bytes"`
	PeakReservedBytes  int64   `json:"peak_reserved_bytes"`
	Segments           int     `json:"segments"`
	ActiveBlocks       int     `json:"active_blocks"`
	CachedBlocks       int     `json:"cached_blocks"`
	AllocRequests      int64   `json:"alloc_requests"`
	CacheHits          int64   `json:"cache_hits"`
	CacheHitRatio      float64 `json:"cache_hit_ratio"`
	SegmentAllocs      int64   `json:"segment_allocs"`
	SegmentFrees       int64   `json:"segment_frees"`
	OOMRetries         int64   `json:"oom_retries"`
}

// Fragmentation describes the free space inside the pool's segments.
// FragmentationRatio is 1 - largest free block / free bytes: 0 when all free
// space is one block (or there is none), near 1 when it is scattered.
type Fragmentation struct {
	FragmentationRatio    float64 `json:"fragmentation_ratio"`
	FreeBytes             int64   `json:"free_bytes"`
	LargestFreeBlockBytes int64   `json:"largest_free_block_bytes"`
	FreeBlocks            int     `json:"free_blocks"`
	Segments              int     `json:"segments"`
}

// AllocationsRequest is get_allocations's payload: optional filters and a
// page.
type AllocationsRequest struct {
	Target
	Purpose        string         `json:"purpose,omitempty"`
	ModelID        string         `json:"model_id,omitempty"`
	AllocationType AllocationType `json:"allocation_type,omitempty"`
	Persistent     *bool          `json:"persistent,omitempty"`
	Limit          int            `json:"limit,omitempty"`
	Cursor         string         `json:"cursor,omitempty"`
	// AllocationIDs narrows the list to these ids (at most MaxIDs): a
	// fleet request with it finds which device holds an allocation.
	AllocationIDs []string `json:"allocation_ids,omitempty"`
}

// Page sizes of get_allocations.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// AllocationsReply is one page of get_allocations, oldest first. NextCursor
// is set when more allocations match.
type AllocationsReply struct {
	Allocations []Allocation `json:"allocations"`
	TotalCount  int          `json:"total_count"`
	NextCursor  string       `json:"next_cursor,omitempty"`
}

// AllocateRequest is allocate's payload.
type AllocateRequest struct {
	Target
	SizeBytes      int64          `json:"size_bytes"`
	AllocationType AllocationType `json:"allocation_type,omitempty"` // default VRAM
	Alignment      int64          `json:"alignment,omitempty"`       // 0: the pool's 512 bytes
	Purpose        string         `json:"purpose,omitempty"`
	Persistent     bool           `json:"persistent,omitempty"`
	ModelID        string         `json:"model_id,omitempty"`
	TTLSeconds     float64        `json:"ttl_seconds,omitempty"`
	// Export asks for a CUDA IPC handle so another process of the host can
	// map the memory (VRAM only).
	Export bool `json:"export,omitempty"`
	// PID names the process a RESERVATION is for (optional).
	PID int `json:"pid,omitempty"`
	// WaitSeconds (0 to 300) makes an allocation that does not fit now
	// (or would pass the quota) wait for room instead of failing; it needs
	// ttl_seconds, so a requester that gave up leaks nothing. Priority
	// (-100 to 100) orders the waiters of a device: higher first, then
	// older.
	WaitSeconds float64 `json:"wait_seconds,omitempty"`
	Priority    int     `json:"priority,omitempty"`
	// Reclaim makes the allocation a holder: when a waiter of higher
	// priority cannot fit, the worker asks the holder to give memory back
	// down to keep_bytes, verifies it did, and asks it to take it again
	// when room returns. Its priority is Priority.
	Reclaim *Reclaim `json:"reclaim,omitempty"`
}

// Reclaim is how a holder is asked to give memory back and to take it
// again: by NATS request-reply on Subject, or by HTTP POST to ReleaseURL
// and RestoreURL; KeepBytes is what it keeps meanwhile.
type Reclaim struct {
	Subject    string `json:"subject,omitempty"`
	ReleaseURL string `json:"release_url,omitempty"`
	RestoreURL string `json:"restore_url,omitempty"`
	KeepBytes  int64  `json:"keep_bytes,omitempty"`
}

// ReclaimNotice is the data of the request a holder gets: action release
// (give memory back down to keep_bytes by deadline: free or resize, then
// answer success) or restore (take it again).
type ReclaimNotice struct {
	AllocationID string    `json:"allocation_id"`
	DeviceID     string    `json:"device_id"`
	BytesWanted  int64     `json:"bytes_wanted,omitempty"`
	Deadline     time.Time `json:"deadline"`
}

// The actions of a ReclaimNotice.
const (
	ActionRelease = "release"
	ActionRestore = "restore"
)

// ResizeRequest is resize's payload: a RESERVATION's new size (and,
// optionally, its process).
type ResizeRequest struct {
	Target
	AllocationID string `json:"allocation_id"`
	SizeBytes    int64  `json:"size_bytes"`
	PID          int    `json:"pid,omitempty"`
	// WaitSeconds: a growth that does not fit waits this long in the
	// admission queue (0: refused at once), as an allocate would.
	WaitSeconds float64 `json:"wait_seconds,omitempty"`
}

// Admission bounds.
const (
	MaxWaitSeconds = 300
	MaxPriority    = 100
	// MaxPID is the largest process id Linux hands out (PID_MAX_LIMIT).
	MaxPID = 1 << 22
)

// DeallocateRequest is deallocate's payload: one id, or several. It is all
// or nothing: when one id is unknown nothing is freed.
type DeallocateRequest struct {
	Target
	AllocationID  string   `json:"allocation_id,omitempty"`
	AllocationIDs []string `json:"allocation_ids,omitempty"`
}

// DeallocateReply is deallocate's reply.
type DeallocateReply struct {
	DeallocatedIDs []string `json:"deallocated_ids"`
	FreedBytes     int64    `json:"freed_bytes"`
}

// ClearRequest is clear's payload. Filters narrow what is freed; persistent
// allocations are freed only with Force. ReleaseCached (default true) also
// returns the pool's empty segments to the device.
type ClearRequest struct {
	Target
	Purpose        string         `json:"purpose,omitempty"`
	ModelID        string         `json:"model_id,omitempty"`
	AllocationType AllocationType `json:"allocation_type,omitempty"`
	Force          bool           `json:"force,omitempty"`
	ReleaseCached  *bool          `json:"release_cached,omitempty"`
}

// ClearReply is clear's reply.
type ClearReply struct {
	ClearedAllocations int   `json:"cleared_allocations"`
	ClearedBytes       int64 `json:"cleared_bytes"`
	SkippedPersistent  int   `json:"skipped_persistent"`
	SkippedBusy        int   `json:"skipped_busy"` // being transferred
	ReleasedSegments   int   `json:"released_segments"`
	ReleasedBytes      int64 `json:"released_bytes"`
}

// PressureRequest is get_pressure's payload.
type PressureRequest struct {
	Target
}

// Level is a memory pressure level.
type Level string

// The pressure levels, in increasing order.
const (
	LevelNormal   Level = "normal"
	LevelWarning  Level = "warning"
	LevelCritical Level = "critical"
)

// PressureFigures are what a pressure reading (get_pressure) and a
// pressure event share: the level and the figures it follows.
type PressureFigures struct {
	DeviceID      string  `json:"device_id"`
	Level         Level   `json:"level"`
	PreviousLevel Level   `json:"previous_level,omitempty"`
	UsageRatio    float64 `json:"usage_ratio"`
	// The figures of Usage of the same names: the level follows
	// PressureRatio.
	PressureRatio          float64 `json:"pressure_ratio"`
	AvailableBytes         int64   `json:"available_bytes"`
	ReclaimableBytes       int64   `json:"reclaimable_bytes"`
	ReservationUnusedBytes int64   `json:"reservation_unused_bytes"`
	WaitingBytes           int64   `json:"waiting_bytes"`
	WarningThreshold       float64 `json:"warning_threshold"`
	CriticalThreshold      float64 `json:"critical_threshold"`
	UsedBytes              int64   `json:"used_bytes"`
	FreeBytes              int64   `json:"free_bytes"`
	TotalBytes             int64   `json:"total_bytes"`
}

// Pressure is a device's pressure as get_pressure reports it.
type Pressure struct {
	PressureFigures
	ChangedAt time.Time `json:"changed_at"`
	Trend     string    `json:"trend"`
	SampledAt time.Time `json:"sampled_at"`
}

// Consumer is a user of a device's memory, as pressure events name them.
type Consumer struct {
	// Kind is one of the Consumer kinds.
	Kind  string `json:"kind"`
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
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

// The trends of Pressure.
const (
	TrendRising  = "rising"
	TrendFalling = "falling"
	TrendSteady  = "steady"
)
