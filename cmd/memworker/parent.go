package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// underGoRun reports whether exe is a binary `go run` built: since Go 1.24
// it is cached in the build cache (…/go-build/ab/<hash>-d/memworker), and
// before that it ran from the go command's work folder
// (…/go-build123/b001/exe/memworker).
func underGoRun(exe string) bool {
	dir := filepath.Base(filepath.Dir(exe))
	return strings.Contains(exe, string(filepath.Separator)+"go-build") &&
		(dir == "exe" || strings.HasSuffix(dir, "-d"))
}

// stopWithParent cancels when the process that started this one is gone
// (this process is handed to another parent), checking every interval.
// Under `go run`, Ctrl-C or SIGTERM in some shells reaches only the go
// command; without this the worker would keep serving, orphaned, on its
// port. Outside `go run` nothing watches: a worker started with nohup or
// by a supervisor outlives its parent on purpose.
func stopWithParent(ctx context.Context, cancel context.CancelFunc, interval time.Duration, getppid func() int, log *slog.Logger) {
	parent := getppid()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if now := getppid(); now != parent {
				log.Warn("the go run that started memworker is gone; stopping", "parent_pid", parent)
				cancel()
				return
			}
		}
	}
}

// watchGoRun starts stopWithParent when this binary runs under go run.
func watchGoRun(ctx context.Context, cancel context.CancelFunc, log *slog.Logger) {
	if exe, err := os.Executable(); err == nil && underGoRun(exe) {
		go stopWithParent(ctx, cancel, 500*time.Millisecond, os.Getppid, log)
	}
}
