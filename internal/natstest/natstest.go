// Package natstest starts embedded nats-servers for tests, each stopped
// when its test ends.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Serve starts a server with opts and waits until it takes connections.
func Serve(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return srv
}

// Server starts a server on a free port of 127.0.0.1.
func Server(t testing.TB) *server.Server {
	t.Helper()
	return Serve(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
}

// JetStream starts a server on a free port of 127.0.0.1 with JetStream,
// storing in a folder of the test's.
func JetStream(t testing.TB) *server.Server {
	t.Helper()
	return Serve(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, JetStream: true, StoreDir: t.TempDir()})
}

// Connect connects to srv; the connection closes when the test ends.
func Connect(t testing.TB, srv *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
