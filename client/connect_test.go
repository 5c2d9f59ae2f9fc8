package client_test

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/memworker/memworker/client"
)

// TestResilientReconnectsAndSaysSoOnce: a resilient connection outlives
// its server's restart, telling once that it is lost and once that it is
// back.
func TestResilientReconnectsAndSaysSoOnce(t *testing.T) {
	start := func(port int) *server.Server {
		srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
		if err != nil {
			t.Fatal(err)
		}
		srv.Start()
		if !srv.ReadyForConnections(5 * time.Second) {
			t.Fatal("server not ready")
		}
		return srv
	}
	srv := start(-1)
	port := srv.Addr().(*net.TCPAddr).Port
	events := make(chan client.ConnectionEvent, 16)
	nc, err := nats.Connect(srv.ClientURL(), client.Resilient(func(e client.ConnectionEvent) { events <- e })...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc.Opts.MaxReconnect != -1 {
		t.Errorf("max reconnects %d, want -1 (forever)", nc.Opts.MaxReconnect)
	}
	srv.Shutdown()
	if e := <-events; !e.Lost {
		t.Fatalf("first event %+v, want lost", e)
	}
	time.Sleep(time.Second) // several attempts fail meanwhile
	srv2 := start(port)
	defer srv2.Shutdown()
	select {
	case e := <-events:
		if e.Lost || e.URL == "" {
			t.Fatalf("second event %+v, want back", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("not reconnected")
	}
	nc.Close()
	time.Sleep(100 * time.Millisecond)
	if len(events) != 0 {
		t.Errorf("%d more events: one for lost, one for back, none for a close", len(events))
	}
}
