package worker

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/memworker/memworker/subjects"
)

// metrics are the worker's Prometheus metrics. Device gauges are read from
// the devices at scrape time (a Collector), so they are never stale;
// counters and histograms are updated as requests are served.
type metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	transfers prometheus.Counter
	events    *prometheus.CounterVec
	dropped   *prometheus.CounterVec
	// autoReleased counts bytes auto-release returned to the devices.
	autoReleased prometheus.Counter
	// waiting counts the allocates waiting for room; waited is how long
	// they waited.
	waiting prometheus.Gauge
	// eventWaits counts the allocation events that waited for the
	// publisher (the queue was full).
	eventWaits prometheus.Counter
	waited     prometheus.Histogram
	// paused is 1 while the devices grant nothing because the node's
	// lease cannot be confirmed.
	paused prometheus.Gauge
	// ops holds each operation's success counter and duration histogram,
	// looked up once: a label lookup hashes the labels on every request.
	ops map[subjects.Op]opMetrics
}

type opMetrics struct {
	ok       prometheus.Counter
	duration prometheus.Observer
}

var deviceLabels = []string{"node", "device_id"}

var (
	descTotal           = prometheus.NewDesc("memworker_device_total_bytes", "Device memory in all (device truth).", deviceLabels, nil)
	descUsed            = prometheus.NewDesc("memworker_device_used_bytes", "Device memory in use by anyone (device truth).", deviceLabels, nil)
	descFree            = prometheus.NewDesc("memworker_device_free_bytes", "Device memory free (device truth).", deviceLabels, nil)
	descReserved        = prometheus.NewDesc("memworker_pool_reserved_bytes", "Device memory the worker's pool holds.", deviceLabels, nil)
	descAllocated       = prometheus.NewDesc("memworker_pool_allocated_bytes", "Pool memory handed out to allocations.", deviceLabels, nil)
	descPinned          = prometheus.NewDesc("memworker_pinned_host_bytes", "Page-locked host memory held for the device.", deviceLabels, nil)
	descAllocs          = prometheus.NewDesc("memworker_allocations", "Live allocations.", deviceLabels, nil)
	descFrag            = prometheus.NewDesc("memworker_pool_fragmentation_ratio", "1 - largest free block / free bytes in the pool.", deviceLabels, nil)
	descPressure        = prometheus.NewDesc("memworker_pressure_level", "1 for the device's current pressure level, 0 for the others.", append(deviceLabels, "level"), nil)
	descAvailable       = prometheus.NewDesc("memworker_device_available_bytes", "What a new allocation can get now: free + reclaimable - unused reservations.", deviceLabels, nil)
	descReclaim         = prometheus.NewDesc("memworker_pool_reclaimable_bytes", "Memory the worker's pool holds that no allocation uses.", deviceLabels, nil)
	descPressureR       = prometheus.NewDesc("memworker_pressure_ratio", "1 - available / total: the pressure levels follow it.", deviceLabels, nil)
	descUsageR          = prometheus.NewDesc("memworker_usage_ratio", "used / total (device truth).", deviceLabels, nil)
	descTenantAllocated = prometheus.NewDesc("memworker_tenant_allocated_bytes", "VRAM bytes a tenant asked for on the device (what its quota caps).", append(deviceLabels, "tenant"), nil)
	descTenantQuota     = prometheus.NewDesc("memworker_tenant_quota_bytes", "A tenant's quota on the device.", append(deviceLabels, "tenant"), nil)
	descUp              = prometheus.NewDesc("memworker_device_up", "1 when the device answers, 0 when it does not.", deviceLabels, nil)

	nodeLabels         = []string{"node"}
	descPinnedPool     = prometheus.NewDesc("memworker_pinned_pool_bytes", "Page-locked host memory the host's pool holds, shared by its devices.", nodeLabels, nil)
	descPinnedInUse    = prometheus.NewDesc("memworker_pinned_pool_in_use_bytes", "Pinned pool memory handed out to allocations.", nodeLabels, nil)
	descPinnedMax      = prometheus.NewDesc("memworker_pinned_pool_max_bytes", "The pinned pool's cap (--pinned-max).", nodeLabels, nil)
	descPinnedRequests = prometheus.NewDesc("memworker_pinned_pool_requests_total", "Pinned segments asked of the pool.", nodeLabels, nil)
	descPinnedHits     = prometheus.NewDesc("memworker_pinned_pool_hits_total", "Pinned segments the pool served without page-locking more memory.", nodeLabels, nil)
	descPinnedLocked   = prometheus.NewDesc("memworker_pinned_pool_locked_bytes_total", "Host memory the pool page-locked since start.", nodeLabels, nil)
	descPinnedAhead    = prometheus.NewDesc("memworker_pinned_pool_ahead_bytes", "Pinned pool memory page-locked ahead of an offload pressure makes likely (--pinned-ahead), not used yet.", nodeLabels, nil)
)

func newMetrics(reg prometheus.Registerer, w *Worker) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "memworker_requests_total", Help: "Requests served, by operation and result code (ok or the error code).",
		}, []string{"op", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "memworker_request_duration_seconds", Help: "Time to serve a request, by operation.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2.5, 12),
		}, []string{"op"}),
		transfers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "memworker_transfer_bytes_total", Help: "Bytes copied by completed transfers.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "memworker_events_published_total", Help: "Events sent: pressure events by reason, allocation events by type. Counted as they go out.",
		}, []string{"reason"}),
		eventWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "memworker_event_waits_total", Help: "Allocation events that waited for the publisher because its queue was full (never dropped).",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "memworker_admission_waiting", Help: "Allocate requests waiting for room, on every device.",
		}),
		waited: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "memworker_admission_wait_seconds", Help: "How long allocate requests waited for room, granted or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "memworker_node_lease_unconfirmed", Help: "1 while the node's lease cannot be renewed (JetStream unreachable): the devices grant no memory meanwhile; frees and reads go on.",
		}),
		autoReleased: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "memworker_auto_released_bytes_total", Help: "Cached pool memory returned to the devices because device memory use reached the warning threshold.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "memworker_requests_dropped_total", Help: "Requests dropped without a reply, by reason (no_reply_subject, reply_subject_not_allowed).",
		}, []string{"reason"}),
	}
	m.ops = make(map[subjects.Op]opMetrics)
	for _, op := range subjects.Ops() {
		m.ops[op] = opMetrics{ok: m.requests.WithLabelValues(string(op), "ok"), duration: m.duration.WithLabelValues(string(op))}
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.transfers, m.events, m.dropped, m.autoReleased, m.waiting, m.waited, m.eventWaits, m.paused, deviceCollector{w})
	}
	return m
}

// served counts a request of op that ended with code ("" for success).
func (m *metrics) served(op subjects.Op, code subjects.Code, since time.Time) {
	om := m.ops[op]
	if code == "" {
		om.ok.Inc()
	} else {
		m.requests.WithLabelValues(string(op), string(code)).Inc()
	}
	om.duration.Observe(time.Since(since).Seconds())
}

// deviceCollector reads every device at scrape time.
type deviceCollector struct{ w *Worker }

func (c deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTotal, descUsed, descFree, descReserved, descAllocated, descPinned, descAllocs, descFrag, descPressure, descUp, descAvailable, descReclaim, descPressureR, descUsageR, descTenantAllocated, descTenantQuota,
		descPinnedPool, descPinnedInUse, descPinnedMax, descPinnedRequests, descPinnedHits, descPinnedLocked, descPinnedAhead} {
		ch <- d
	}
}

func (c deviceCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.w.pinned.Figures()
	for _, m := range []struct {
		d *prometheus.Desc
		t prometheus.ValueType
		v float64
	}{
		{descPinnedPool, prometheus.GaugeValue, float64(f.PinnedBytes)},
		{descPinnedInUse, prometheus.GaugeValue, float64(f.InUseBytes)},
		{descPinnedMax, prometheus.GaugeValue, float64(f.MaxBytes)},
		{descPinnedRequests, prometheus.CounterValue, float64(f.Requests)},
		{descPinnedHits, prometheus.CounterValue, float64(f.Hits)},
		{descPinnedLocked, prometheus.CounterValue, float64(f.LockedBytes)},
		{descPinnedAhead, prometheus.GaugeValue, float64(f.AheadBytes)},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, m.t, m.v, c.w.cfg.Node)
	}
	for _, g := range c.w.gpus {
		c.collect(g, ch)
	}
}

func (c deviceCollector) collect(g *gpu, ch chan<- prometheus.Metric) {
	labels := []string{c.w.cfg.Node, g.ID()}
	gauge := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(labels, extra...)...)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	u, err := g.Usage(context.Background(), time.Now().UTC())
	if err != nil {
		gauge(descUp, 0)
		return
	}
	gauge(descUp, 1)
	gauge(descTotal, float64(u.TotalBytes))
	gauge(descUsed, float64(u.UsedBytes))
	gauge(descFree, float64(u.FreeBytes))
	gauge(descReserved, float64(u.ReservedBytes))
	gauge(descAllocated, float64(u.AllocatedBytes))
	gauge(descPinned, float64(u.PinnedHostBytes))
	gauge(descAllocs, float64(u.Allocations))
	for _, t := range g.Tenants() {
		gauge(descTenantAllocated, float64(t.AllocatedBytes), t.Tenant)
		if t.QuotaBytes > 0 {
			gauge(descTenantQuota, float64(t.QuotaBytes), t.Tenant)
		}
	}
	gauge(descAvailable, float64(u.AvailableBytes))
	gauge(descReclaim, float64(u.ReclaimableBytes))
	gauge(descPressureR, u.PressureRatio)
	gauge(descUsageR, u.UsageRatio)
	gauge(descFrag, g.Fragmentation().Ratio)
	level, _ := g.Level()
	for _, l := range []subjects.Level{subjects.LevelNormal, subjects.LevelWarning, subjects.LevelCritical} {
		v := 0.0
		if l == level {
			v = 1
		}
		gauge(descPressure, v, string(l))
	}
}
