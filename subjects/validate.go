package subjects

import (
	"math"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on request fields.
const (
	// MaxSizeBytes bounds size_bytes (1 PiB): larger values are surely
	// mistakes and would overflow rounding arithmetic.
	MaxSizeBytes = 1 << 50
	// MaxAlignment bounds alignment: the pool's segments are aligned to
	// 2 MiB.
	MaxAlignment = 2 << 20
	// MaxTTLSeconds bounds ttl_seconds (30 days).
	MaxTTLSeconds = 30 * 24 * 3600
	// MaxLabelLen bounds purpose and model_id.
	MaxLabelLen = 256
	// MaxIDs bounds allocation_ids in one deallocate.
	MaxIDs = 1000
	// MaxIDLen bounds an allocation id.
	MaxIDLen = 128
)

// Validate checks an allocate payload's shape and normalises its allocation
// type. It knows nothing of the device's capacity.
func (r *AllocateRequest) Validate() error {
	if r.SizeBytes <= 0 {
		return Invalid("size_bytes must be a positive number of bytes, got %d", r.SizeBytes)
	}
	if r.SizeBytes > MaxSizeBytes {
		return Invalid("size_bytes %d is beyond any device (max %d)", r.SizeBytes, int64(MaxSizeBytes))
	}
	t, err := normaliseType(r.AllocationType, VRAM)
	if err != nil {
		return err
	}
	r.AllocationType = t
	if r.Alignment < 0 || r.Alignment > MaxAlignment || r.Alignment&(r.Alignment-1) != 0 {
		return Invalid("alignment must be 0 or a power of two up to %d, got %d", MaxAlignment, r.Alignment)
	}
	if math.IsNaN(r.TTLSeconds) || r.TTLSeconds < 0 || r.TTLSeconds > MaxTTLSeconds {
		return Invalid("ttl_seconds must be between 0 (no expiry) and %d", MaxTTLSeconds)
	}
	if err := checkLabel("purpose", r.Purpose); err != nil {
		return err
	}
	return checkLabel("model_id", r.ModelID)
}

// Validate checks a deallocate payload and returns the ids to free, without
// duplicates, in request order.
func (r *DeallocateRequest) Validate() error {
	if r.AllocationID == "" && len(r.AllocationIDs) == 0 {
		return Invalid("allocation_id or allocation_ids is required")
	}
	if len(r.AllocationIDs) > MaxIDs {
		return Invalid("at most %d allocation_ids per request, got %d", MaxIDs, len(r.AllocationIDs))
	}
	if len(r.AllocationID) > MaxIDLen {
		return Invalid("allocation_id is longer than %d bytes", MaxIDLen)
	}
	for _, id := range r.AllocationIDs {
		if id == "" || len(id) > MaxIDLen {
			return Invalid("allocation_ids holds an id that is empty or longer than %d bytes", MaxIDLen)
		}
	}
	return nil
}

// IDs returns every id the request names, without duplicates, in order.
func (r *DeallocateRequest) IDs() []string {
	seen := make(map[string]bool, len(r.AllocationIDs)+1)
	var ids []string
	for _, id := range append([]string{r.AllocationID}, r.AllocationIDs...) {
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		ids = append(ids, id)
	}
	return ids
}

// Validate checks a get_allocations payload and applies the default page
// size.
func (r *AllocationsRequest) Validate() error {
	if r.Limit < 0 || r.Limit > MaxPageLimit {
		return Invalid("limit must be between 1 and %d, got %d", MaxPageLimit, r.Limit)
	}
	if r.Limit == 0 {
		r.Limit = DefaultPageLimit
	}
	if len(r.Cursor) > MaxIDLen {
		return Invalid("cursor is longer than %d bytes", MaxIDLen)
	}
	return r.validateFilters()
}

func (r *AllocationsRequest) validateFilters() error {
	t, err := normaliseType(r.AllocationType, "")
	if err != nil {
		return err
	}
	r.AllocationType = t
	if err := checkLabel("purpose", r.Purpose); err != nil {
		return err
	}
	return checkLabel("model_id", r.ModelID)
}

// Validate checks a clear payload.
func (r *ClearRequest) Validate() error {
	t, err := normaliseType(r.AllocationType, "")
	if err != nil {
		return err
	}
	r.AllocationType = t
	if err := checkLabel("purpose", r.Purpose); err != nil {
		return err
	}
	return checkLabel("model_id", r.ModelID)
}

// normaliseType accepts an allocation type in any letter case; empty means
// def.
func normaliseType(t AllocationType, def AllocationType) (AllocationType, error) {
	if t == "" {
		return def, nil
	}
	switch u := AllocationType(strings.ToUpper(string(t))); u {
	case VRAM, Pinned:
		return u, nil
	}
	return "", Invalid("allocation_type must be %s or %s, got %s", VRAM, Pinned, quote(string(t)))
}

func checkLabel(field, s string) error {
	if len(s) > MaxLabelLen {
		return Invalid("%s is longer than %d bytes", field, MaxLabelLen)
	}
	if !utf8.ValidString(s) {
		return Invalid("%s is not valid UTF-8", field)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return Invalid("%s holds a control character", field)
		}
	}
	return nil
}
