package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestTheHTTPEndpoints: /metrics, /healthz and /readyz always; Go's
// profiles only when asked for (--pprof).
func TestTheHTTPEndpoints(t *testing.T) {
	ready := func(context.Context) error { return nil }
	for _, profiles := range []bool{false, true} {
		addr := freeAddr(t)
		stop, err := serveHTTP(context.Background(), addr, newRegistry(), ready, profiles, quiet())
		if err != nil {
			t.Fatal(err)
		}
		for path, want := range map[string]int{
			"/metrics":                 http.StatusOK,
			"/healthz":                 http.StatusOK,
			"/readyz":                  http.StatusOK,
			"/debug/pprof/":            map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[profiles],
			"/debug/pprof/goroutine":   map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[profiles],
			"/debug/pprof/nonexistent": http.StatusNotFound,
		} {
			resp, err := http.Get("http://" + addr + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("profiles %v: GET %s: %d, want %d (%s)", profiles, path, resp.StatusCode, want, strings.TrimSpace(string(body)))
			}
		}
		stop()
	}
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
