package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
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
	opts := &server.Options{ServerName: "memworker-embedded", Host: "127.0.0.1", Port: 4222, JetStream: true}
	if configFile != "" {
		var err error
		if opts, err = server.ProcessConfigFile(configFile); err != nil {
			return nil, fmt.Errorf("--nats-config: %w", err)
		}
	}
	// --listen and --port, when given, win over the file, as nats-server's
	// own flags do.
	if host != "" {
		opts.Host = host
	}
	if port != 0 {
		opts.Port = port
	}
	opts.NoSigs = true
	if storeDir != "" {
		opts.StoreDir = storeDir
	}
	if opts.JetStream && opts.StoreDir == "" {
		// Events are kept across restarts: a per-user state folder, one
		// per port, so two embedded servers never share one. Any free
		// port (-1) is a new server each time: a temporary folder.
		var dir string
		if opts.Port > 0 {
			var err error
			if dir, err = stateDir(opts.Port); err != nil {
				log.Warn("no state folder; JetStream keeps events in a temporary one until the worker stops", "err", err)
				dir = ""
			}
		}
		if dir == "" {
			var err error
			if dir, err = os.MkdirTemp("", "memworker-js-"); err != nil {
				return nil, err
			}
			e.tmpDir = dir
		}
		opts.StoreDir = dir
	}
	// A port in use fails now, with the system's words, instead of after
	// the server's ten seconds of trying.
	if opts.Port > 0 {
		addr := net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			e.cleanup()
			return nil, fmt.Errorf("embedded nats-server cannot listen on %s: %w (another memworker or nats-server? use --port, --port -1 for any free one, or --nats-url to join a running server)", addr, err)
		}
		l.Close()
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

// stateDir is where the embedded server on port keeps JetStream data by
// default: $XDG_STATE_HOME/memworker/<port>, else
// ~/.local/state/memworker/<port>.
func stateDir(port int) (string, error) {
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		base = filepath.Join(home, ".local", "state")
	}
	dir := filepath.Join(base, "memworker", strconv.Itoa(port))
	return dir, os.MkdirAll(dir, 0o700)
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
