package subjects

import "time"

// AnalyticsRequest is analytics's payload: the window to report, ending now.
type AnalyticsRequest struct {
	Target
	WindowSeconds float64 `json:"window_seconds,omitempty"` // default 3600
	MaxSamples    int     `json:"max_samples,omitempty"`    // default 120, at most 1000
}

// Analytics bounds.
const (
	DefaultWindowSeconds = 3600
	MaxWindowSeconds     = 24 * 3600
	DefaultMaxSamples    = 120
	MaxSamples           = 1000
)

// Sample is the device's memory at one instant.
type Sample struct {
	At                 time.Time `json:"at"`
	UsedBytes          int64     `json:"used_bytes"`
	ReservedBytes      int64     `json:"reserved_bytes"`
	AllocatedBytes     int64     `json:"allocated_bytes"`
	UsageRatio         float64   `json:"usage_ratio"`
	FragmentationRatio float64   `json:"fragmentation_ratio"`
	Level              Level     `json:"level"`
}

// SizeBucket counts allocations of at most LeBytes (and more than the
// previous bucket's).
type SizeBucket struct {
	LeBytes int64 `json:"le_bytes"`
	Count   int64 `json:"count"`
}

// PressureTime is how long the device spent at each level in the window.
type PressureTime struct {
	NormalSeconds   float64 `json:"normal_seconds"`
	WarningSeconds  float64 `json:"warning_seconds"`
	CriticalSeconds float64 `json:"critical_seconds"`
}

// AnalyticsReply summarises a window of the device's history. Samples are
// evenly thinned to at most the requested number.
type AnalyticsReply struct {
	DeviceID                string         `json:"device_id"`
	WindowSeconds           float64        `json:"window_seconds"`
	From                    time.Time      `json:"from"`
	To                      time.Time      `json:"to"`
	Samples                 []Sample       `json:"samples"`
	SampleCount             int            `json:"sample_count"`
	PeakUsedBytes           int64          `json:"peak_used_bytes"`
	MeanUsedBytes           int64          `json:"mean_used_bytes"`
	PeakReservedBytes       int64          `json:"peak_reserved_bytes"`
	MeanReservedBytes       int64          `json:"mean_reserved_bytes"`
	MeanFragmentationRatio  float64        `json:"mean_fragmentation_ratio"`
	Allocations             int64          `json:"allocations"`
	Frees                   int64          `json:"frees"`
	AllocatedBytesTotal     int64          `json:"allocated_bytes_total"`
	FreedBytesTotal         int64          `json:"freed_bytes_total"`
	AllocationRatePerSecond float64        `json:"allocation_rate_per_second"`
	FreeRatePerSecond       float64        `json:"free_rate_per_second"`
	SizeHistogram           []SizeBucket   `json:"size_histogram"`
	ByPurpose               []PurposeUsage `json:"by_purpose"`
	Pressure                PressureTime   `json:"pressure"`
}

// OptimizationRecsRequest is optimization_recs's payload.
type OptimizationRecsRequest struct {
	Target
}

// Severities of recommendations.
const (
	SeverityInfo     = "info"
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// SuggestedAction is a request ready to send: Data is the payload for
// memory.<op>.<device_id>, unchanged.
type SuggestedAction struct {
	Op   Op             `json:"op"`
	Data map[string]any `json:"data"`
}

// Recommendation is one thing worth doing to the device's memory.
type Recommendation struct {
	Type                  string          `json:"type"`
	Severity              string          `json:"severity"`
	Message               string          `json:"message"`
	EstimatedSavingsBytes int64           `json:"estimated_savings_bytes"`
	SuggestedAction       SuggestedAction `json:"suggested_action"`
}

// OptimizationRecsReply lists recommendations, most severe first.
type OptimizationRecsReply struct {
	DeviceID        string           `json:"device_id"`
	Level           Level            `json:"level"`
	UsageRatio      float64          `json:"usage_ratio"`
	Recommendations []Recommendation `json:"recommendations"`
}
