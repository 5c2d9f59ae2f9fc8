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

// startEmbedded starts a nats-server in this process: from configFile when
// given (it decides listen address, auth and JetStream), else on host:port
// with JetStream on.
func startEmbedded(host string, port int, storeDir, configFile string, log *slog.Logger) (*embedded, error) {
	e := &embedded{}
	opts := &server.Options{ServerName: "memworker-embedded", Host: host, Port: port, JetStream: true}
	if configFile != "" {
		var err error
		if opts, err = server.ProcessConfigFile(configFile); err != nil {
			return nil, fmt.Errorf("--nats-config: %w", err)
		}
	}
	opts.NoSigs = true
	if storeDir != "" {
		opts.StoreDir = storeDir
	}
	if opts.JetStream && opts.StoreDir == "" {
		dir, err := os.MkdirTemp("", "memworker-js-")
		if err != nil {
			return nil, err
		}
		opts.StoreDir, e.tmpDir = dir, dir
	}
	srv, err := server.NewServer(opts)
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
	log.Info("embedded nats-server started", "url", srv.ClientURL(), "jetstream", srv.JetStreamEnabled(), "store_dir", opts.StoreDir)
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
