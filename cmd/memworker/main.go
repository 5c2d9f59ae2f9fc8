// Command memworker serves a GPU host's memory over NATS. With no flags it
// starts an embedded nats-server (JetStream on) on 127.0.0.1:4222 and two
// simulated 16 GiB devices; --nats-url connects to an existing server or
// cluster instead.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/memworker/memworker/bytesize"
	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device/sim"
)

type cli struct {
	Version kong.VersionFlag `name:"version" help:"Print the version and exit."`
	Probe   string           `name:"probe" placeholder:"URL" help:"Ask URL (such as http://127.0.0.1:9400/readyz) and exit 0 if it answers 2xx, 1 if not: a container's health check, in an image without wget or curl."`

	NatsURL string `name:"nats-url" env:"NATS_URL" help:"Connect to this NATS server or cluster (comma-separated URLs) instead of starting an embedded one."`
	client.Flags

	Listen     string `help:"Embedded server: address to listen on (default 127.0.0.1, or --nats-config's)."`
	Port       int    `help:"Embedded server: client port (default 4222, or --nats-config's; -1 picks a free one)."`
	StoreDir   string `name:"store-dir" help:"Embedded server: JetStream storage folder, where events are kept across restarts (default: $XDG_STATE_HOME/memworker/<port> or ~/.local/state/memworker/<port>; with --port -1 a temporary one)."`
	NatsConfig string `name:"nats-config" type:"existingfile" help:"Embedded server: a nats-server configuration file (accounts, users, permissions, TLS); --listen and --port, when given, override where it listens."`

	Node    string `help:"Node name; device ids are <node>-gpu<index> (default: the sanitized host name)."`
	Standby bool   `help:"Stand by, serving nothing, for a node another worker serves, and take it over when that worker stops (rolling restart, failover; needs JetStream)."`
	Backend string `default:"auto" enum:"auto,sim,cuda" help:"Memory backend: auto (cuda when built with the cuda tag and a GPU is present, else sim), sim or cuda."`

	CudaMemoryLimit string `name:"cuda-memory-limit" help:"cuda backend: manage at most this much of each GPU (a size such as 40GiB; default: all of it)."`
	VMM             bool   `name:"vmm" default:"true" negatable:"" help:"VRAM pools on CUDA virtual memory where the driver supports it: segments grow in place and free memory goes back to the device without copying; --no-vmm (or --vmm=false) takes cuMemAlloc segments, which defragment compacts by copying. The sim backend models both."`
	VMMPiece        string `name:"vmm-piece" default:"${vmm_piece}" help:"With --vmm: the largest piece of physical memory mapped at once (a power of two). Memory goes back to the device a whole piece at a time; each piece costs the driver time to map and unmap (a cold 1 GiB allocation on an H100: 2MiB, every free 2 MiB chunk goes back, about 52 ms; 64MiB about 1.8 ms; 256MiB about 0.55 ms; cuMemAlloc about 0.15-0.45 ms)." placeholder:"SIZE"`

	SimDevices int    `name:"sim-devices" default:"2" help:"sim backend: number of devices."`
	SimMemory  string `name:"sim-memory" default:"16GiB" help:"sim backend: memory per device (bytes or a size such as 16GiB)."`

	WarningThreshold  float64       `name:"warning-threshold" default:"${warning}" help:"Usage ratio at which pressure is warning."`
	CriticalThreshold float64       `name:"critical-threshold" default:"${critical}" help:"Usage ratio at which pressure is critical."`
	ExpiryInterval    time.Duration `name:"expiry-interval" default:"${expiry}" help:"How late, at most, a lease is freed after its expiry: leases ending this close together are freed and announced together."`
	SampleInterval    time.Duration `name:"sample-interval" default:"${sample}" help:"How often devices are sampled for pressure and history."`
	Quota             []string      `name:"quota" help:"Cap a tenant's (NATS account's) VRAM per device: TENANT=SIZE such as team-a=40GiB, or *=SIZE for every tenant not named. Repeatable." placeholder:"TENANT=SIZE"`
	PinnedPool        string        `name:"pinned-pool" help:"Page-lock this much host memory at start and keep it for offloads and transfers to the host (a size such as 16GiB; default: none); later pinned memory is kept too, up to --pinned-max." placeholder:"SIZE"`
	PinnedAhead       bool          `name:"pinned-ahead" default:"true" negatable:"" help:"When a device's pressure reaches warning, page-lock ahead, within --pinned-max, what an offload of its least recently used models would need; give it back when pressure falls."`
	PinnedMax         string        `name:"pinned-max" help:"Page-locked host memory the worker holds at most (a size such as 64GiB; default: half the host's memory)." placeholder:"SIZE"`
	StarvationGuard   time.Duration `name:"starvation-guard" default:"${starvation_guard}" help:"How long a waiting allocate may wait before requests of its priority or lower stop passing it and queue behind it."`
	ReclaimTimeout    time.Duration `name:"reclaim-timeout" default:"${reclaim_timeout}" help:"How long a holder asked to give memory back for a waiter of higher priority has to do it (and have it verified)."`
	MaxWaiters        int           `name:"max-waiters" default:"${max_waiters}" help:"Allocates waiting for room on each device at most (a tenant: a quarter of it); past it allocate fails with OVERLOADED at once."`
	MaxAllocations    int           `name:"max-allocations" default:"${max_allocations}" help:"Live allocations each device keeps at most; past it allocate fails with OUT_OF_MEMORY."`
	ReadHandlers      int           `name:"read-handlers" default:"${read_handlers}" help:"Subscriptions serving each read-only operation of each device (micro runs one request at a time on each; default: one per 4 cores, at most 4)."`
	TruthMaxAge       time.Duration `name:"truth-max-age" default:"${truth_max_age}" help:"How old the driver's free and total bytes may be before they are read again (0: on every request); the worker's own allocations show at once."`
	TelemetryMaxAge   time.Duration `name:"telemetry-max-age" default:"${telemetry_max_age}" help:"How old NVML's process list in a status or usage reply may be (it is read at most this often per device)."`
	CriticalRepeat    time.Duration `name:"critical-repeat" default:"${critical_repeat}" help:"How often a critical level is announced again."`
	EventsBinary      bool          `name:"events-binary" help:"Publish pressure events in CloudEvents binary mode (ce- headers) instead of structured JSON."`
	NoEventStream     bool          `name:"no-event-stream" help:"Do not keep pressure events in a JetStream stream."`
	AutoRelease       bool          `name:"auto-release" default:"true" help:"Return the pool's empty cached segments to the device when device memory use reaches the warning threshold (--auto-release=false to keep them)."`
	CacheHold         time.Duration `name:"cache-hold" default:"${cache_hold}" help:"How long memory the worker's clients freed stays cached before it goes back to the GPU, for any process to have (0: at once; -1s: kept until pressure or optimize)."`
	CacheKeep         string        `name:"cache-keep" default:"${cache_keep}" help:"What stays cached for the worker's own clients past --cache-hold (a size such as 256MiB)."`
	EventStreamMax    string        `name:"event-stream-max-bytes" default:"256MiB" help:"The most the event stream keeps (a size such as 1GiB); the oldest events go first."`
	EventReplicas     int           `name:"event-replicas" help:"Replicas of the event stream (default: the number of servers in the cluster, at most 3)."`

	MetricsAddr string `name:"metrics-addr" help:"Serve Prometheus /metrics, /healthz and /readyz on this address (e.g. :9400)."`
	Pprof       bool   `name:"pprof" help:"With --metrics-addr: serve Go's profiles on /debug/pprof/ too (CPU, heap, goroutines, execution trace)."`

	LogFormat string `name:"log-format" default:"text" enum:"text,json" help:"Log format (text, json)."`
	LogLevel  string `name:"log-level" default:"info" enum:"debug,info,warn,error" help:"Log level."`
}

// defaults are the flags' defaults, taken from the worker's own so they
// are stated once.
func defaults() kong.Vars {
	d := worker.DefaultConfig()
	return kong.Vars{
		"warning":           strconv.FormatFloat(d.Thresholds.Warning, 'g', -1, 64),
		"critical":          strconv.FormatFloat(d.Thresholds.Critical, 'g', -1, 64),
		"expiry":            d.ExpiryInterval.String(),
		"sample":            d.SampleInterval.String(),
		"read_handlers":     strconv.Itoa(d.ReadHandlers),
		"max_allocations":   strconv.Itoa(d.MaxAllocations),
		"starvation_guard":  d.StarvationGuard.String(),
		"max_waiters":       strconv.Itoa(d.MaxWaiters),
		"reclaim_timeout":   d.ReclaimTimeout.String(),
		"cache_hold":        d.CacheHold.String(),
		"cache_keep":        strconv.FormatInt(d.CacheKeep>>20, 10) + "MiB",
		"truth_max_age":     d.TruthMaxAge.String(),
		"telemetry_max_age": d.TelemetryMaxAge.String(),
		"critical_repeat":   d.CriticalRepeat.String(),
		"vmm_piece":         strconv.FormatInt(d.MapPiece>>20, 10) + "MiB",
		"version":           "memworker " + worker.BuildVersion(),
	}
}

// Exit codes: 0 stopped cleanly (SIGINT, SIGTERM), 1 could not start or
// failed while serving, 2 bad flags.
const (
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	var c cli
	kong.Parse(&c, kong.Description("Serve this host's GPU memory over NATS."), defaults(),
		// --port -1: a negative number is a flag's value.
		kong.WithHyphenPrefixedParameters(true),
		// Bad flags exit 2, as usage errors do (kong's own code is 80).
		kong.Exit(func(code int) {
			if code == 80 {
				code = exitUsage
			}
			os.Exit(code)
		}))
	if c.Probe != "" {
		if err := probe(c.Probe); err != nil {
			fmt.Fprintln(os.Stderr, "memworker:", err)
			os.Exit(exitFailed)
		}
		return
	}
	log := newLogger(c.LogFormat, c.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	watchGoRun(ctx, stop, log)
	if err := run(ctx, &c, log); err != nil {
		log.Error("memworker stopped", "err", err)
		os.Exit(exitFailed)
	}
}

// config is the worker's configuration the flags describe, without a
// backend.
func config(c *cli, log *slog.Logger) worker.Config {
	cfg := worker.DefaultConfig()
	cfg.Logger = log
	cfg.Node = c.Node
	if cfg.Node == "" {
		host, _ := os.Hostname()
		cfg.Node = subjects.SanitizeNode(host)
	}
	cfg.Standby = c.Standby
	cfg.Thresholds.Warning, cfg.Thresholds.Critical = c.WarningThreshold, c.CriticalThreshold
	cfg.ExpiryInterval = c.ExpiryInterval
	cfg.SampleInterval = c.SampleInterval
	cfg.TelemetryMaxAge = c.TelemetryMaxAge
	cfg.TruthMaxAge = c.TruthMaxAge
	cfg.ReadHandlers = c.ReadHandlers
	cfg.MaxAllocations = c.MaxAllocations
	cfg.StarvationGuard, cfg.MaxWaiters, cfg.ReclaimTimeout = c.StarvationGuard, c.MaxWaiters, c.ReclaimTimeout
	for _, q := range c.Quota {
		if cfg.Quotas == nil {
			cfg.Quotas = map[string]int64{}
		}
		tenant, size, _ := strings.Cut(q, "=")
		n, err := parseSize("--quota "+tenant, size)
		if err != nil || tenant == "" {
			n = -1 // refused by Validate, with the flag named
		}
		cfg.Quotas[tenant] = n
	}
	cfg.CriticalRepeat = c.CriticalRepeat
	cfg.EventsBinary = c.EventsBinary
	cfg.EventsJetStream = !c.NoEventStream
	cfg.EventReplicas = c.EventReplicas
	cfg.AutoRelease = c.AutoRelease
	cfg.CacheHold = c.CacheHold
	return cfg
}

func run(ctx context.Context, c *cli, log *slog.Logger) error {
	if c.Pprof && c.MetricsAddr == "" {
		return errors.New("--pprof serves the profiles on --metrics-addr: give that address too")
	}
	cfg := config(c, log)
	var err error
	if cfg.CacheKeep, err = parseSize("--cache-keep", c.CacheKeep); err != nil {
		return err
	}
	cfg.PinnedAhead = c.PinnedAhead
	if c.PinnedPool != "" {
		if cfg.PinnedPool, err = parseSize("--pinned-pool", c.PinnedPool); err != nil {
			return err
		}
	}
	if c.PinnedMax != "" {
		if cfg.PinnedMax, err = parseSize("--pinned-max", c.PinnedMax); err != nil {
			return err
		}
	}
	if cfg.EventStreamMaxBytes, err = parseSize("--event-stream-max-bytes", c.EventStreamMax); err != nil {
		return err
	}
	if cfg.MapPiece, err = parseSize("--vmm-piece", c.VMMPiece); err != nil {
		return err
	}

	backend, closeBackend, err := openBackend(c, log)
	if err != nil {
		return err
	}
	defer closeBackend()
	cfg.Backend = backend

	var reg *prometheus.Registry
	if c.MetricsAddr != "" {
		reg = newRegistry()
		cfg.Metrics = reg
	}
	w, err := worker.New(ctx, cfg)
	if err != nil {
		return err
	}
	url := c.NatsURL
	if url == "" {
		srv, err := startEmbedded(c.Listen, c.Port, c.StoreDir, c.NatsConfig, log)
		if err != nil {
			return err
		}
		defer srv.shutdown()
		url = srv.ClientURL()
	}
	natsOpts, err := c.Flags.Options()
	if err != nil {
		return err
	}
	natsOpts = append(natsOpts, nats.Name("memworker "+cfg.Node))
	natsOpts = append(natsOpts, client.Resilient(func(e client.ConnectionEvent) {
		if e.Lost {
			log.Warn("NATS connection lost; reconnecting until it is back", "err", e.Err)
			return
		}
		log.Info("NATS connection back", "url", e.URL)
	})...)
	nc, err := nats.Connect(url, natsOpts...)
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w", url, err)
	}
	if reg != nil {
		ready := func(ctx context.Context) error {
			if !nc.IsConnected() {
				return errors.New("not connected to NATS")
			}
			return w.Check(ctx)
		}
		stopHTTP, err := serveHTTP(ctx, c.MetricsAddr, reg, ready, c.Pprof, log)
		if err != nil {
			nc.Close()
			return err
		}
		defer stopHTTP()
	}
	runErr := w.Run(ctx, nc)
	return runErr
}

func newLogger(format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// simBackend builds the simulated host the sim flags describe.
func simBackend(c *cli) (*sim.Backend, error) {
	memory, err := parseSize("--sim-memory", c.SimMemory)
	if err != nil {
		return nil, err
	}
	if c.SimDevices < 1 || c.SimDevices > 64 {
		return nil, fmt.Errorf("--sim-devices %d: want 1 to 64", c.SimDevices)
	}
	cfg := sim.Default(c.SimDevices, memory)
	cfg.DisableVMM = !c.VMM
	return sim.New(cfg), nil
}

func parseSize(flag, s string) (int64, error) {
	n, err := bytesize.Parse(s)
	if err != nil || n > 1<<50 {
		return 0, fmt.Errorf("%s %q: want a size such as 16GiB (%s)", flag, s, bytesize.Help)
	}
	return n, nil
}
