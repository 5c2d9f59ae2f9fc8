package integration

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// TestMetricsAgreeWithGetUsage scrapes the worker's metrics with the
// Prometheus text parser and checks them against get_usage.
func TestMetricsAgreeWithGetUsage(t *testing.T) {
	srv := startServer(t)
	reg := prometheus.NewRegistry()
	startWorker(t, srv, "n1", withDevices(1, GiB), withConfig(func(c *worker.Config) { c.Metrics = reg }))
	nc := connect(t, srv)
	next := subscribeEvents(t, nc, "n1-gpu0")
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 900 * MiB}, nil) // warning
	for next(2*time.Second).data.Level != subjects.LevelWarning {
	}
	call(t, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 10 * MiB, Purpose: "x"}, nil)
	callErr(t, nc, subjects.Allocate, "n1-gpu0", []byte(`{"data":{"size_bytes":-1}}`), subjects.CodeInvalidRequest)
	var u subjects.Usage
	call(t, nc, subjects.GetUsage, "n1-gpu0", nil, &u)

	families := scrape(t, reg)
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		return metricValue(t, families, name, labels)
	}
	dev := map[string]string{"node": "n1", "device_id": "n1-gpu0"}
	for name, want := range map[string]int64{
		"memworker_device_total_bytes":     u.TotalBytes,
		"memworker_device_used_bytes":      u.UsedBytes,
		"memworker_device_free_bytes":      u.FreeBytes,
		"memworker_pool_reserved_bytes":    u.ReservedBytes,
		"memworker_pool_allocated_bytes":   u.AllocatedBytes,
		"memworker_allocations":            int64(u.Allocations),
		"memworker_device_available_bytes": u.AvailableBytes,
		"memworker_pool_reclaimable_bytes": u.ReclaimableBytes,
	} {
		if got := value(name, dev); got != float64(want) {
			t.Errorf("%s = %v, get_usage says %d", name, got, want)
		}
	}
	if got := value("memworker_pressure_ratio", dev); got != u.PressureRatio {
		t.Errorf("memworker_pressure_ratio = %v, get_usage says %v", got, u.PressureRatio)
	}
	if value("memworker_pressure_level", map[string]string{"device_id": "n1-gpu0", "level": "warning"}) != 1 {
		t.Error("pressure level metric does not say warning")
	}
	if value("memworker_requests_total", map[string]string{"op": "allocate", "code": "ok"}) != 2 ||
		value("memworker_requests_total", map[string]string{"op": "allocate", "code": "INVALID_REQUEST"}) != 1 {
		t.Error("request counters do not match the requests sent")
	}
	if value("memworker_events_published_total", map[string]string{"reason": "changed"}) < 1 {
		t.Error("no pressure event counted")
	}
	if _, ok := families["memworker_request_duration_seconds"]; !ok {
		t.Error("no latency histogram")
	}
}

// scrape reads reg through its HTTP handler, as Prometheus would.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	web := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer web.Close()
	resp, err := http.Get(web.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// metricValue is the value of the gauge or counter name with labels.
func metricValue(t *testing.T, families map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := families[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	for _, m := range f.Metric {
		if matchLabels(m, labels) {
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			return m.Counter.GetValue()
		}
	}
	t.Fatalf("no %s with %v", name, labels)
	return 0
}

func matchLabels(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.Label {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
