package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/subjects"
)

// BenchmarkPressureEventLatency measures the time from sending the
// allocation that crosses the warning threshold to the pressure event
// arriving at a subscriber, with JetStream keeping events (the default).
func BenchmarkPressureEventLatency(b *testing.B) {
	srv := startJetStreamServer(b)
	nc := connect(b, srv)
	next := subscribeEvents(b, nc, "n1-gpu0")
	h := startWorker(b, srv, "n1", withDevices(1, GiB))
	next(2 * time.Second) // startup
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		var a subjects.Allocation
		call(b, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: 900 * MiB}, &a)
		if r := next(2 * time.Second); r.data.Level != subjects.LevelWarning {
			b.Fatalf("got %+v", r.data)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		call(b, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
		call(b, nc, subjects.Clear, "n1-gpu0", nil, nil)
		next(2 * time.Second) // back to normal
		b.StartTimer()
	}
	reportLatency(b, lat)
	_ = h
}

// reportLatency adds p50 and p99 in microseconds to the benchmark's output.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkAdmissionGrant measures the time from sending the free that
// makes room to the waiting allocate's grant at its client (run it with
// -benchtime 100x for the 100 rounds the target speaks of).
func BenchmarkAdmissionGrant(b *testing.B) {
	srv := startServer(b)
	nc := connect(b, srv)
	startWorker(b, srv, "n1", withDevices(1, GiB))
	dev := "n1-gpu0"
	var lat []time.Duration
	round := 0
	for b.Loop() {
		b.StopTimer()
		round++
		var blocker subjects.Allocation
		call(b, nc, subjects.Allocate, dev, subjects.AllocateRequest{SizeBytes: 900 * MiB}, &blocker)
		body, _ := subjects.NewRequest(fmt.Sprint("grant-", round), subjects.Allocate,
			subjects.AllocateRequest{SizeBytes: 500 * MiB, WaitSeconds: 10, TTLSeconds: 60})
		inbox := nats.NewInbox()
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			b.Fatal(err)
		}
		if err := nc.PublishRequest(subjects.Request(subjects.Allocate, dev), inbox, body); err != nil {
			b.Fatal(err)
		}
		for {
			var u subjects.Usage
			call(b, nc, subjects.GetUsage, dev, nil, &u)
			if u.WaitingRequests == 1 {
				break
			}
		}
		b.StartTimer()
		start := time.Now()
		call(b, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: blocker.AllocationID}, nil)
		msg, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		var granted subjects.Allocation
		if _, err := subjects.DecodeReply(msg.Data, &granted); err != nil {
			b.Fatal(err)
		}
		_ = sub.Unsubscribe()
		call(b, nc, subjects.Deallocate, dev, subjects.DeallocateRequest{AllocationID: granted.AllocationID}, nil)
		b.StartTimer()
	}
	reportLatency(b, lat)
}

// BenchmarkThroughImport measures what a tenant pays: allocate+deallocate
// and a bare echo, each sent from the worker's own account and from a
// tenant account through a service import (share: true), on one server
// loaded from docs/accounts.conf with the echo exported beside the
// operations. Compare allocate+deallocate/echo within each account: the
// import's own cost is in both.
func BenchmarkThroughImport(b *testing.B) {
	conf, err := os.ReadFile("../docs/accounts.conf")
	if err != nil {
		b.Fatal(err)
	}
	text := strings.Replace(string(conf), `      { stream: "memory.lifecycle.>" }
`, `      { stream: "memory.lifecycle.>" }
      { service: "bench.echo" }
`, 1)
	text = strings.Replace(text, `    users: [ { user: alice, password: "change-me-alice" } ]
    imports: [`, `    users: [ { user: alice, password: "change-me-alice" } ]
    imports: [
      { service: { account: MEMORY, subject: "bench.echo" }, share: true }`, 1)
	path := filepath.Join(b.TempDir(), "accounts.conf")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		b.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		b.Fatal(err)
	}
	opts.Port, opts.StoreDir, opts.NoSigs, opts.NoLog = -1, b.TempDir(), true, true
	srv := serve(b, opts)
	login := func(user string) *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(user, "change-me-"+user))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		return nc
	}
	startWorkerOn(b, context.Background(), login("worker"), "n1", withDevices(1, 64*GiB))
	echo := login("operator")
	if _, err := echo.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		b.Fatal(err)
	}
	_ = echo.Flush()
	alloc, _ := subjects.NewRequest("", subjects.Allocate, subjects.AllocateRequest{SizeBytes: MiB})
	for _, who := range []string{"operator", "alice"} {
		nc := login(who)
		b.Run("echo/"+who, func(b *testing.B) {
			for b.Loop() {
				if _, err := nc.Request("bench.echo", alloc, 5*time.Second); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("allocate+deallocate/"+who, func(b *testing.B) {
			for b.Loop() {
				var a subjects.Allocation
				call(b, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: MiB}, &a)
				call(b, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: a.AllocationID}, nil)
			}
		})
	}
}

// BenchmarkTransferVerify measures transfers of one allocation to pinned
// host memory, end to end at the client (request to completed), without
// and with verify, alternating in the same run, and reports the medians
// and the ratio. BENCH_TRANSFER_BYTES sets the size (default 256 MiB;
// the GPU pass uses 8 GiB).
func BenchmarkTransferVerify(b *testing.B) {
	size := benchBytes(b, "BENCH_TRANSFER_BYTES", 256*MiB)
	srv := startServer(b)
	h := startWorker(b, srv, "n1", withDevices(1, 4*size))
	nc := connect(b, srv)
	var a subjects.Allocation
	call(b, nc, subjects.Allocate, "n1-gpu0", subjects.AllocateRequest{SizeBytes: size}, &a)
	// Real content, so no backend can copy or read nothing.
	loc, n, err := h.Locate("n1-gpu0", a.AllocationID)
	if err != nil {
		b.Fatal(err)
	}
	if err := h.dev.Write(context.Background(), loc, pattern(7, n)); err != nil {
		b.Fatal(err)
	}
	rates := map[bool][]float64{}
	copyRates := map[bool][]float64{}
	for b.Loop() {
		for _, verify := range []bool{false, true} {
			done, took := transferDone(b, nc, subjects.TransferRequest{AllocationID: a.AllocationID, TargetAllocationType: subjects.Pinned, Verify: verify})
			secs := took.Seconds()
			b.Logf("verify %v: %.3f s end to end: setup %.3f s, copy %.3f s, verify %.3f s", verify, secs, done.SetupSeconds, done.CopySeconds, done.VerifySeconds)
			rates[verify] = append(rates[verify], float64(size)/secs/1e9)
			copyRates[verify] = append(copyRates[verify], done.CopyThroughputBytesPerSecond/1e9)
			b.StopTimer()
			call(b, nc, subjects.Deallocate, "n1-gpu0", subjects.DeallocateRequest{AllocationID: done.DestinationAllocationID}, nil)
			b.StartTimer()
		}
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	plain, verified := median(rates[false]), median(rates[true])
	b.ReportMetric(plain, "GB/s")
	b.ReportMetric(verified, "verify-GB/s")
	b.ReportMetric(verified/plain, "verify-ratio")
	b.ReportMetric(median(copyRates[false]), "copy-GB/s")
}
