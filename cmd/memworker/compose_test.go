package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
	composecli "github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// TestComposeFileAgreesWithTheWorker loads docker-compose.yml with the
// compose-spec loader (as docker compose does) and checks what no Docker
// engine here can: every worker's command parses with the worker's own
// flags, points at NATS services of the file on their client port, and
// names a node of its own; the NATS cluster is pinned, has JetStream and
// routes to every member; the GPU profile reserves NVIDIA devices.
func TestComposeFileAgreesWithTheWorker(t *testing.T) {
	const password = "a-test-password"
	t.Setenv("MEMWORKER_NATS_PASSWORD", password)
	path, _ := filepath.Abs("../../docker-compose.yml")
	opts, err := composecli.NewProjectOptions([]string{path}, composecli.WithName("memworker"), composecli.WithOsEnv, composecli.WithProfiles([]string{"gpu"}))
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("loading %s: %v", path, err)
	}

	natsServices := map[string]types.ServiceConfig{}
	workers := map[string]types.ServiceConfig{}
	for name, svc := range project.Services {
		switch {
		case strings.HasPrefix(name, "nats-"):
			natsServices[name] = svc
		case strings.HasPrefix(name, "worker-"):
			workers[name] = svc
		}
	}
	if len(natsServices) != 3 || len(workers) != 3 {
		t.Fatalf("%d NATS services and %d workers, want 3 and 3", len(natsServices), len(workers))
	}

	for name, svc := range natsServices {
		image, tag, _ := strings.Cut(svc.Image, ":")
		if image != "nats" || tag == "" || tag == "latest" {
			t.Errorf("%s: image %q is not a pinned official nats image", name, svc.Image)
		}
		cmd := strings.Join(svc.Command, " ")
		if !strings.Contains(cmd, "--js") || !strings.Contains(cmd, "--cluster_name memworker") {
			t.Errorf("%s: command %q lacks JetStream or the cluster", name, cmd)
		}
		for other := range natsServices {
			if !strings.Contains(cmd, "nats://"+other+":6222") {
				t.Errorf("%s: no route to %s", name, other)
			}
		}
	}
	if !publishes(natsServices["nats-1"], 4222, 4222) {
		t.Error("nats-1 does not publish 4222 to the host, where memctl and the nats CLI look by default")
	}
	for name, svc := range natsServices {
		for _, p := range svc.Ports {
			if p.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %d on %q: the servers publish on 127.0.0.1 only", name, p.Target, p.HostIP)
			}
		}
		if svc.HealthCheck == nil {
			t.Errorf("%s has no health check", name)
		}
		if cmd := strings.Join(svc.Command, " "); !strings.Contains(cmd, "--user memworker --pass "+password) {
			t.Errorf("%s: command %q asks no password of clients", name, cmd)
		}
	}

	nodes := map[string]string{}
	for name, svc := range workers {
		var c cli
		parser, err := kong.New(&c, kong.Name("memworker"), defaults(), kong.Exit(func(int) { t.Fatalf("%s: kong exited", name) }))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parser.Parse(svc.Command); err != nil {
			t.Errorf("%s: command %q does not parse with the worker's flags: %v", name, svc.Command, err)
			continue
		}
		if svc.Build == nil {
			t.Errorf("%s: no build: docker compose up fails on a fresh machine", name)
		}
		if c.NatsURL == "" {
			t.Errorf("%s: no --nats-url: it would start an embedded server inside the container", name)
		}
		for _, u := range strings.Split(c.NatsURL, ",") {
			parsed, err := url.Parse(u)
			if err != nil || natsServices[parsed.Hostname()].Name == "" || parsed.Port() != "4222" {
				t.Errorf("%s: --nats-url %q is not a NATS service of the file on 4222", name, u)
			}
		}
		if prev, dup := nodes[c.Node]; dup || c.Node == "" {
			t.Errorf("%s: node %q is also %s's", name, c.Node, prev)
		}
		nodes[c.Node] = name
		if env := svc.Environment; env["NATS_USER"] == nil || *env["NATS_USER"] != "memworker" || env["NATS_PASSWORD"] == nil || *env["NATS_PASSWORD"] != password {
			t.Errorf("%s: no NATS credentials in its environment: %v", name, env)
		}
		if c.MetricsAddr != ":9400" || svc.HealthCheck == nil ||
			!slices.Equal(svc.HealthCheck.Test, []string{"CMD", "/usr/local/bin/memworker", "--probe", "http://127.0.0.1:9400/readyz"}) {
			t.Errorf("%s: metrics on %q, health check %+v; want :9400 and --probe of its /readyz", name, c.MetricsAddr, svc.HealthCheck)
		}
		if c.Backend == "cuda" {
			if !reservesNvidia(svc) || !slices.Contains(svc.Profiles, "gpu") {
				t.Errorf("%s: a cuda worker must be in the gpu profile and reserve NVIDIA devices", name)
			}
		}
	}
}

func publishes(svc types.ServiceConfig, target uint32, published int) bool {
	for _, p := range svc.Ports {
		if p.Target == target && p.Published == strconv.Itoa(published) {
			return true
		}
	}
	return false
}

func reservesNvidia(svc types.ServiceConfig) bool {
	if svc.Deploy == nil || svc.Deploy.Resources.Reservations == nil {
		return false
	}
	for _, d := range svc.Deploy.Resources.Reservations.Devices {
		if d.Driver == "nvidia" && slices.Contains(d.Capabilities, "gpu") {
			return true
		}
	}
	return false
}

// TestComposeNeedsAPassword: without MEMWORKER_NATS_PASSWORD the file does
// not load (compose refuses to start a cluster anyone could use).
func TestComposeNeedsAPassword(t *testing.T) {
	t.Setenv("MEMWORKER_NATS_PASSWORD", "")
	path, _ := filepath.Abs("../../docker-compose.yml")
	opts, err := composecli.NewProjectOptions([]string{path}, composecli.WithName("memworker"), composecli.WithOsEnv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := opts.LoadProject(context.Background()); err == nil || !strings.Contains(err.Error(), "MEMWORKER_NATS_PASSWORD") {
		t.Errorf("loaded without a password: %v", err)
	}
}

// TestProbe: --probe answers a container's health check.
func TestProbe(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	defer bad.Close()
	if err := probe(ok.URL); err != nil {
		t.Errorf("probe of a ready server: %v", err)
	}
	if err := probe(bad.URL); err == nil {
		t.Error("probe of a 503 passed")
	}
}
