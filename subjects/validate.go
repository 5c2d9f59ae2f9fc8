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
	// MaxTTLSeconds bounds ttl_seconds (30 days); MinTTLSeconds is the
	// shortest lease (1 ms): a shorter one would round to no ttl at all.
	MaxTTLSeconds = 30 * 24 * 3600
	MinTTLSeconds = 0.001
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
	if r.Export && t != VRAM {
		return Invalid("export needs allocation_type %s", VRAM)
	}
	if math.IsNaN(r.WaitSeconds) || r.WaitSeconds < 0 || r.WaitSeconds > MaxWaitSeconds {
		return Invalid("wait_seconds must be between 0 and %d", MaxWaitSeconds)
	}
	if r.WaitSeconds > 0 && r.TTLSeconds == 0 {
		return Invalid("wait_seconds needs ttl_seconds: a requester that gave up waiting must not leak memory")
	}
	if r.Priority < -MaxPriority || r.Priority > MaxPriority {
		return Invalid("priority must be between -%d and %d, got %d", MaxPriority, MaxPriority, r.Priority)
	}
	if r.PID < 0 || r.PID > MaxPID || (r.PID > 0 && t != Reservation) {
		return Invalid("pid names the process of a %s (a number from 1 to %d), got %d for %s", Reservation, MaxPID, r.PID, t)
	}
	if r.Alignment < 0 || r.Alignment > MaxAlignment || r.Alignment&(r.Alignment-1) != 0 {
		return Invalid("alignment must be 0 or a power of two up to %d, got %d", MaxAlignment, r.Alignment)
	}
	if err := checkTTL(r.TTLSeconds); err != nil {
		return err
	}
	if err := checkLabel("purpose", r.Purpose); err != nil {
		return err
	}
	if r.Reclaim != nil && t == Pinned {
		return Invalid("reclaim is for device memory: a %s allocation holds none", Pinned)
	}
	if err := r.Reclaim.validate(r.SizeBytes); err != nil {
		return err
	}
	return checkLabel("model_id", r.ModelID)
}

// validate checks a holder's reclaim spec against its size.
func (c *Reclaim) validate(size int64) error {
	if c == nil {
		return nil
	}
	if (c.Subject == "") == (c.ReleaseURL == "") {
		return Invalid("reclaim needs a subject or a release_url (one of them)")
	}
	if c.Subject != "" && !validSubject(c.Subject) {
		return Invalid("reclaim.subject %s is not a NATS subject without wildcards", Quote(c.Subject))
	}
	if c.Subject != "" && reservedSubject(c.Subject) {
		return Invalid("reclaim.subject %s is the worker's or the server's own (%s..., $..., _...): a holder listens on a subject of its own, such as %s<name>", Quote(c.Subject), Root+".", HolderPrefix)
	}
	for _, u := range []string{c.ReleaseURL, c.RestoreURL} {
		if u != "" && (len(u) > MaxLabelLen || !(strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) || checkLabel("reclaim url", u) != nil) {
			return Invalid("reclaim URLs are http:// or https:// URLs of at most %d bytes, got %s", MaxLabelLen, Quote(u))
		}
	}
	if c.KeepBytes < 0 || c.KeepBytes >= size {
		return Invalid("reclaim.keep_bytes must be at least 0 and less than size_bytes, got %d", c.KeepBytes)
	}
	return nil
}

// reservedSubject reports whether the worker must never send a holder's
// ask to s: its own subjects (requests, events), the server's ($JS, $KV,
// $SYS, ...) and inboxes.
func reservedSubject(s string) bool {
	return strings.HasPrefix(s, "$") || strings.HasPrefix(s, "_") || strings.HasPrefix(s, Root+".")
}

// validSubject reports whether s is a NATS subject a request can go to:
// dot-separated tokens of printable ASCII, no wildcards, at most
// MaxLabelLen bytes.
func validSubject(s string) bool {
	if s == "" || len(s) > MaxLabelLen {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c <= ' ' || c > '~' {
				return false
			}
		}
	}
	return true
}

// Validate checks a resize payload.
func (r *ResizeRequest) Validate() error {
	if r.AllocationID == "" || len(r.AllocationID) > MaxIDLen {
		return Invalid("allocation_id is required (at most %d bytes)", MaxIDLen)
	}
	// 0 is a holder that gave everything back and waits to restore.
	if r.SizeBytes < 0 || r.SizeBytes > MaxSizeBytes {
		return Invalid("size_bytes must be 0 to %d bytes, got %d", int64(MaxSizeBytes), r.SizeBytes)
	}
	if r.PID < 0 || r.PID > MaxPID {
		return Invalid("pid must be a number from 1 to %d, got %d", MaxPID, r.PID)
	}
	if math.IsNaN(r.WaitSeconds) || r.WaitSeconds < 0 || r.WaitSeconds > MaxWaitSeconds {
		return Invalid("wait_seconds must be between 0 and %d", MaxWaitSeconds)
	}
	return nil
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

// IDs returns every id the request names, without duplicates, in order,
// each as first spelt. Ids are UUIDs, matched in any letter case, so two
// spellings that differ only in case are one id.
func (r *DeallocateRequest) IDs() []string {
	seen := make(map[string]bool, len(r.AllocationIDs)+1)
	var ids []string
	for _, id := range append([]string{r.AllocationID}, r.AllocationIDs...) {
		key := strings.ToLower(id)
		if id == "" || seen[key] {
			continue
		}
		seen[key] = true
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
	if len(r.AllocationIDs) > 0 {
		if err := (&DeallocateRequest{AllocationIDs: r.AllocationIDs}).Validate(); err != nil {
			return err
		}
	}
	return validateFilter(&r.AllocationType, r.Purpose, r.ModelID)
}

// Validate checks a clear payload.
func (r *ClearRequest) Validate() error {
	return validateFilter(&r.AllocationType, r.Purpose, r.ModelID)
}

// validateFilter checks the filters get_allocations and clear share, and
// normalises the type's letter case.
func validateFilter(t *AllocationType, purpose, modelID string) error {
	n, err := normaliseType(*t, "")
	if err != nil {
		return err
	}
	*t = n
	if err := checkLabel("purpose", purpose); err != nil {
		return err
	}
	return checkLabel("model_id", modelID)
}

// normaliseType accepts an allocation type in any letter case; empty means
// def.
func normaliseType(t AllocationType, def AllocationType) (AllocationType, error) {
	if t == "" {
		return def, nil
	}
	switch u := AllocationType(upperASCII(string(t))); u {
	case VRAM, Pinned, Reservation:
		return u, nil
	}
	return "", Invalid("allocation_type must be %s, %s or %s, got %s", VRAM, Pinned, Reservation, Quote(string(t)))
}

func checkLabel(field, s string) error {
	if len(s) > MaxLabelLen {
		return Invalid("%s is longer than %d bytes", field, MaxLabelLen)
	}
	if !utf8.ValidString(s) {
		return Invalid("%s is not valid UTF-8", field)
	}
	for _, r := range s {
		// Format characters include the bidi overrides (U+202E shows a
		// name backwards in a log or a table) and zero-width ones.
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return Invalid("%s holds a control or format character (U+%04X)", field, r)
		}
		// The JSON decoder turns a lone surrogate escape ("\ud800") into
		// U+FFFD: a label holding it was mangled on its way, not meant.
		if r == utf8.RuneError {
			return Invalid("%s holds U+FFFD (a lone surrogate escape, or text mangled before it was sent)", field)
		}
	}
	return nil
}

// upperASCII and lowerASCII change the letter case of ASCII letters only:
// an enum's spelling in another case is accepted, a look-alike that
// Unicode case folding would turn into it ("pınned") is not.
func upperASCII(s string) string { return mapASCII(s, 'a', 'z', 'A'-'a') }
func lowerASCII(s string) string { return mapASCII(s, 'A', 'Z', 'a'-'A') }

func mapASCII(s string, lo, hi byte, delta int) string {
	b := []byte(s)
	for i, c := range b {
		if c >= lo && c <= hi {
			b[i] = byte(int(c) + delta)
		}
	}
	return string(b)
}

// Validate checks a transfer payload and applies its defaults.
func (r *TransferRequest) Validate() error {
	if r.AllocationID == "" || len(r.AllocationID) > MaxIDLen {
		return Invalid("allocation_id is required (at most %d bytes)", MaxIDLen)
	}
	if r.TargetDeviceID != "" && !ValidToken(r.TargetDeviceID) {
		return Invalid("target_device_id %s is not a device id", Quote(r.TargetDeviceID))
	}
	t, err := normaliseType(r.TargetAllocationType, VRAM)
	if err != nil {
		return Invalid("target_allocation_type must be %s or %s", VRAM, Pinned)
	}
	if t == Reservation {
		return Invalid("a transfer copies bytes: its target is %s or %s, not %s", VRAM, Pinned, Reservation)
	}
	r.TargetAllocationType = t
	switch r.Mode = lowerASCII(r.Mode); r.Mode {
	case "":
		r.Mode = ModeCopy
	case ModeCopy, ModeMove:
	default:
		return Invalid("mode must be %s or %s, got %s", ModeCopy, ModeMove, Quote(r.Mode))
	}
	return nil
}

// Validate checks a get_transfer payload.
func (r *GetTransferRequest) Validate() error {
	if r.TransferID == "" || len(r.TransferID) > MaxIDLen {
		return Invalid("transfer_id is required (at most %d bytes)", MaxIDLen)
	}
	return nil
}

// DefaultStrategies are optimize's strategies when none are named: the ones
// that never touch live data's placement on another memory.
var DefaultStrategies = []string{StrategyFreeExpired, StrategyReleaseCached, StrategyDefragment}

// DefaultIdleSeconds is how long an allocation must go unused before
// offload_idle moves it to host memory.
const DefaultIdleSeconds = 300

// Validate checks an optimize payload and applies its defaults.
func (r *OptimizeRequest) Validate() error {
	if len(r.Strategies) == 0 {
		r.Strategies = append([]string(nil), DefaultStrategies...)
	}
	seen := map[string]bool{}
	for i, s := range r.Strategies {
		s = lowerASCII(s)
		switch s {
		case StrategyReleaseCached, StrategyDefragment, StrategyFreeExpired, StrategyOffloadIdle:
		default:
			return Invalid("unknown strategy %s (want %s, %s, %s or %s)", Quote(s),
				StrategyReleaseCached, StrategyDefragment, StrategyFreeExpired, StrategyOffloadIdle)
		}
		if seen[s] {
			return Invalid("strategy %s named twice", s)
		}
		seen[s] = true
		r.Strategies[i] = s
	}
	if err := checkPercentage("target_usage_percentage", r.TargetUsagePercentage); err != nil {
		return err
	}
	if math.IsNaN(r.IdleSeconds) || r.IdleSeconds < 0 || r.IdleSeconds > MaxTTLSeconds {
		return Invalid("idle_seconds must be between 0 and %d", MaxTTLSeconds)
	}
	if r.IdleSeconds == 0 {
		r.IdleSeconds = DefaultIdleSeconds
	}
	return nil
}

// Validate checks a model_optimize payload.
func (r *ModelOptimizeRequest) Validate() error {
	switch r.OptimizationType = lowerASCII(r.OptimizationType); r.OptimizationType {
	case OptimizeOffload, OptimizeEvict, OptimizeRestore:
	default:
		return Invalid("optimization_type must be %s, %s or %s, got %s", OptimizeOffload, OptimizeEvict, OptimizeRestore, Quote(r.OptimizationType))
	}
	if r.TargetUsagePercentage == nil && r.OptimizationType != OptimizeRestore {
		return Invalid("target_usage_percentage is required")
	}
	if r.TargetUsagePercentage != nil {
		if err := checkPercentage("target_usage_percentage", *r.TargetUsagePercentage); err != nil {
			return err
		}
	}
	return checkLabel("model_id", r.ModelID)
}

// Validate checks a model_status payload.
func (r *ModelStatusRequest) Validate() error { return checkLabel("model_id", r.ModelID) }

// Validate checks an analytics payload and applies its defaults.
func (r *AnalyticsRequest) Validate() error {
	if math.IsNaN(r.WindowSeconds) || r.WindowSeconds < 0 || r.WindowSeconds > 0 && r.WindowSeconds < 1 || r.WindowSeconds > MaxWindowSeconds {
		return Invalid("window_seconds must be between 1 and %d (0: %d), got %v", MaxWindowSeconds, DefaultWindowSeconds, r.WindowSeconds)
	}
	if r.WindowSeconds == 0 {
		r.WindowSeconds = DefaultWindowSeconds
	}
	if r.MaxSamples < 0 || r.MaxSamples > MaxSamples {
		return Invalid("max_samples must be between 1 and %d, got %d", MaxSamples, r.MaxSamples)
	}
	if r.MaxSamples == 0 {
		r.MaxSamples = DefaultMaxSamples
	}
	return nil
}

func checkPercentage(field string, v float64) error {
	if math.IsNaN(v) || v < 0 || v > 100 {
		return Invalid("%s must be between 0 and 100, got %v", field, v)
	}
	return nil
}

// Validate checks a renew payload.
func (r *RenewRequest) Validate() error {
	ids := DeallocateRequest{AllocationID: r.AllocationID, AllocationIDs: r.AllocationIDs}
	if err := ids.Validate(); err != nil {
		return err
	}
	return checkTTL(r.TTLSeconds)
}

// IDs returns every id the request names, without duplicates, in order.
func (r *RenewRequest) IDs() []string {
	return (&DeallocateRequest{AllocationID: r.AllocationID, AllocationIDs: r.AllocationIDs}).IDs()
}

func checkTTL(ttl float64) error {
	if math.IsNaN(ttl) || ttl < 0 || ttl > MaxTTLSeconds || (ttl > 0 && ttl < MinTTLSeconds) {
		return Invalid("ttl_seconds must be 0 (no expiry) or between %g and %d", MinTTLSeconds, MaxTTLSeconds)
	}
	return nil
}
