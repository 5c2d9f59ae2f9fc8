package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker/alloc"
	"github.com/memworker/memworker/worker/ledger"
	"github.com/memworker/memworker/worker/monitor"
)

// Config is what a worker needs. Backend and Node are required; the rest
// have defaults (DefaultConfig).
type Config struct {
	// Backend is the host's memory.
	Backend Backend
	// Node names this host; device ids are <Node>-gpu<index>.
	Node string
	// Version is reported by micro discovery.
	Version string
	// Standby joins the queue groups of a node another worker already
	// serves (a standby replica, or the next worker of a rolling restart).
	// Without it, a worker refuses to start when its node is taken.
	Standby bool
	// DiscoveryWait is how long start-up listens for other workers of the
	// same node.
	DiscoveryWait time.Duration
	// Thresholds are the pressure levels.
	Thresholds monitor.Thresholds
	// ExpiryInterval is how late, at most, a lease is freed after its
	// expiry: leases that end that close together are freed (and
	// announced) together. Expiries are met by a timer, not by polling.
	ExpiryInterval time.Duration
	// SampleInterval is how often each device is sampled for pressure and
	// history (the seed's 5 s).
	SampleInterval time.Duration
	// CriticalRepeat is how often a critical level is announced again, so
	// subscribers that joined late learn it.
	CriticalRepeat time.Duration
	// EventsBinary publishes pressure events in binary mode (ce- headers)
	// instead of structured JSON.
	EventsBinary bool
	// EventsJetStream keeps pressure events in a JetStream stream when the
	// server has JetStream.
	EventsJetStream bool
	// AutoRelease returns the pool's empty cached segments to the device
	// when device truth reaches the warning threshold.
	AutoRelease bool
	// CacheHold is how long memory freed by the worker's clients stays
	// cached in its pools before it goes back to the device for any
	// process to have (0: at once; negative: kept, for AutoRelease and
	// optimize's release_cached); CacheKeep is what stays cached for the
	// worker's own clients.
	CacheHold time.Duration
	CacheKeep int64
	// EventReplicas is the event stream's replicas; 0 takes the number of
	// servers the connection knows of, at most 3.
	EventReplicas int
	// EventStreamMaxBytes bounds the event stream (oldest events go
	// first); 0 takes events.DefaultMaxBytes.
	EventStreamMaxBytes int64
	// IdleAfter is how long an allocation goes unused before
	// optimization_recs suggests offloading it.
	IdleAfter time.Duration
	// IdempotencyWindow is how long the reply to a mutating request is kept
	// for retries with the same request_id; IdempotencyEntries and
	// IdempotencyBytes bound how many, and how many bytes, are kept per
	// device (the oldest go first). An allocate's retry is recognised for
	// as long as the allocation lives, whatever these bounds.
	IdempotencyWindow  time.Duration
	IdempotencyEntries int
	IdempotencyBytes   int64
	// TransferRetention is how long get_transfer knows a finished
	// transfer; TransferHistoryBytes bounds the memory those take (the
	// oldest go first), counting about 1 KiB each.
	TransferRetention    time.Duration
	TransferHistoryBytes int64
	// OpTimeout bounds one operation's backend calls.
	OpTimeout time.Duration
	// TelemetryMaxAge is how old the telemetry in a reply (NVML's process
	// list and driver reservation) may be. Reading it costs a driver round
	// trip far slower than the rest of a status, so it is read at most this
	// often per device.
	TelemetryMaxAge time.Duration
	// TruthMaxAge is how old a reading of device truth (the driver's free
	// and total bytes) may be before it is read again; the worker's own
	// allocations are applied to it at once, so it only delays what other
	// processes do. 0 reads the driver on every request.
	TruthMaxAge time.Duration
	// Quotas cap each tenant's requested VRAM bytes per device, by tenant
	// (NATS account); the key "*" applies to every tenant not named.
	Quotas map[string]int64
	// PinnedPool is page-locked host memory pinned at start and kept for
	// offloads and transfers to the host; PinnedMax caps the host's
	// page-locked memory (0: half of the host's memory).
	PinnedPool, PinnedMax int64
	// PinnedAhead grows the pinned pool ahead of the offloads that
	// pressure makes likely (pinahead.go).
	PinnedAhead bool
	// StarvationGuard is how long a waiter may wait before requests of its
	// priority or lower stop passing it; MaxWaiters caps the requests
	// waiting on a device (a quarter of it per tenant).
	StarvationGuard time.Duration
	MaxWaiters      int
	// ReclaimTimeout is how long a holder asked to give memory back has
	// to do it (and have it verified).
	ReclaimTimeout time.Duration
	// MaxAllocations caps each device's live allocations; past it
	// allocate fails with OUT_OF_MEMORY naming the cap.
	MaxAllocations int
	// MapPiece is the largest piece of physical memory a VRAM pool on
	// virtual memory maps at once (--vmm-piece): memory goes back to the
	// device a whole piece at a time, while mapping costs the driver more
	// the more pieces it takes. The backend's granularity (2 MiB on an
	// H100) gives every free chunk back; DefaultConfig takes
	// alloc.DefaultMaxPiece.
	MapPiece int64
	// ReadHandlers is how many subscriptions serve each read-only
	// operation of a device (micro runs one request at a time on each);
	// DefaultReadHandlers by default.
	ReadHandlers int
	// PendingRequests is how many requests an endpoint's subscription
	// holds unhandled before the client library drops more (a slow
	// consumer, logged; the subscription stays); 0: 1,048,576.
	PendingRequests int
	// Logger receives the worker's logs; nil means slog.Default().
	Logger *slog.Logger
	// Metrics, when set, receives the worker's Prometheus metrics.
	Metrics prometheus.Registerer
}

// Version is the worker's release.
const Version = "0.1.0"

// DefaultReadHandlers is one read handler per 4 cores, at most 4: with many
// cores, concurrent reads of one device are served faster in parallel;
// with few, the extra goroutines cost more than they give (membench's
// figures in docs/performance.md).
func DefaultReadHandlers() int { return min(4, max(1, runtime.GOMAXPROCS(0)/4)) }

// DefaultConfig returns a Config with every optional field set.
func DefaultConfig() Config {
	return Config{
		Version:              Version,
		Thresholds:           monitor.DefaultThresholds(),
		ExpiryInterval:       20 * time.Millisecond,
		PinnedAhead:          true,
		SampleInterval:       5 * time.Second,
		IdleAfter:            subjects.DefaultIdleSeconds * time.Second,
		CriticalRepeat:       30 * time.Second,
		EventsJetStream:      true,
		AutoRelease:          true,
		CacheHold:            time.Second,
		CacheKeep:            256 << 20,
		IdempotencyWindow:    10 * time.Minute,
		IdempotencyEntries:   100_000,
		IdempotencyBytes:     4 << 20,
		OpTimeout:            30 * time.Second,
		TransferRetention:    time.Hour,
		TransferHistoryBytes: 64 << 20,
		TelemetryMaxAge:      time.Second,
		TruthMaxAge:          time.Millisecond,
		ReadHandlers:         DefaultReadHandlers(),
		MaxAllocations:       1_000_000,
		StarvationGuard:      ledger.DefaultStarvationGuard,
		MaxWaiters:           ledger.DefaultMaxWaiters,
		ReclaimTimeout:       ledger.DefaultReclaimTimeout,
		MapPiece:             alloc.DefaultMaxPiece,
		DiscoveryWait:        250 * time.Millisecond,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Backend == nil {
		errs = append(errs, errors.New("a backend is required"))
	}
	if !subjects.ValidToken(c.Node) {
		errs = append(errs, fmt.Errorf("node %q must be 1 to %d characters of [A-Za-z0-9_-] and not %q", c.Node, subjects.MaxTokenLen, subjects.Fleet))
	}
	if err := c.Thresholds.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.ExpiryInterval <= 0 || c.SampleInterval <= 0 || c.IdleAfter <= 0 || c.CriticalRepeat <= 0 || c.IdempotencyWindow <= 0 || c.OpTimeout <= 0 || c.TelemetryMaxAge <= 0 {
		errs = append(errs, errors.New("expiry and sample intervals, idempotency window, op timeout and telemetry max age must be positive"))
	}
	if c.EventStreamMaxBytes < 0 {
		errs = append(errs, errors.New("event stream max bytes must not be negative"))
	}
	if c.EventReplicas < 0 || c.EventReplicas > 5 {
		errs = append(errs, errors.New("event replicas must be 0 (from the cluster) to 5"))
	}
	if c.TransferRetention <= 0 || c.TransferHistoryBytes <= 0 {
		errs = append(errs, errors.New("transfer retention and history bytes must be positive"))
	}
	if c.TruthMaxAge < 0 {
		errs = append(errs, errors.New("truth max age must not be negative"))
	}
	for t, q := range c.Quotas {
		if t == "" || q <= 0 {
			errs = append(errs, fmt.Errorf("quota %q=%d: want a tenant (or *) and a positive size", t, q))
		}
	}
	if c.StarvationGuard < 0 || c.MaxWaiters < 0 || c.ReclaimTimeout < 0 {
		errs = append(errs, errors.New("starvation guard, max waiters and reclaim timeout must not be negative"))
	}
	if c.PinnedPool < 0 || c.PinnedMax < 0 {
		errs = append(errs, errors.New("pinned pool and pinned max must not be negative"))
	}
	if c.MaxAllocations < 1 {
		errs = append(errs, errors.New("max allocations must be at least 1"))
	}
	if c.MapPiece < 0 || c.MapPiece&(c.MapPiece-1) != 0 {
		errs = append(errs, fmt.Errorf("map piece (--vmm-piece) %s: want a power of two, such as 2MiB or 64MiB", bytesize.Format(c.MapPiece)))
	}
	if c.ReadHandlers < 1 {
		errs = append(errs, errors.New("read handlers must be at least 1"))
	}
	if c.IdempotencyEntries <= 0 || c.IdempotencyBytes <= 0 {
		errs = append(errs, errors.New("idempotency entries and bytes must be positive"))
	}
	return errors.Join(errs...)
}

// BuildVersion names this build: the release, the module version when
// installed with go install, and the VCS revision the binary was built from.
func BuildVersion() string {
	v := Version
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if m := info.Main.Version; m != "" && m != "(devel)" {
		v += " (module " + m + ")"
	}
	stamped := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " revision " + s.Value
			stamped = true
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	if !stamped {
		// go run and go test do not stamp the revision, nor a build
		// outside a git checkout or with -buildvcs=false.
		v += " (no revision stamped: go run, or built without VCS information)"
	}
	return v + ", " + info.GoVersion
}
