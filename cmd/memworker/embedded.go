package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

type embedded struct {
	*server.Server
	tmpDir string
}

// startEmbedded starts a nats-server in this process with JetStream on.
func startEmbedded(host string, port int, storeDir string, log *slog.Logger) (*embedded, error) {
	e := &embedded{}
	if storeDir == "" {
		dir, err := os.MkdirTemp("", "memworker-js-")
		if err != nil {
			return nil, err
		}
		storeDir, e.tmpDir = dir, dir
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "memworker-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		NoSigs:     true,
	})
	if err != nil {
		e.cleanup()
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		e.cleanup()
		return nil, errors.New("embedded nats-server did not become ready (is the port taken? use --port or --nats-url)")
	}
	e.Server = srv
	log.Info("embedded nats-server started", "url", srv.ClientURL(), "jetstream", srv.JetStreamEnabled(), "store_dir", storeDir)
	return e, nil
}

func (e *embedded) shutdown() {
	e.Shutdown()
	e.WaitForShutdown()
	e.cleanup()
}

func (e *embedded) cleanup() {
	if e.tmpDir != "" {
		_ = os.RemoveAll(e.tmpDir)
	}
}
