//go:build !cuda

package main

import (
	"errors"
	"log/slog"

	"github.com/memworker/memworker/worker"
)

// openBackend opens the backend --backend names. This build has no CUDA:
// auto means sim.
func openBackend(c *cli, _ *slog.Logger) (worker.Backend, func(), error) {
	if c.Backend == "cuda" {
		return nil, nil, errors.New("--backend cuda: this memworker was built without CUDA; build it with scripts/cuda-build.sh")
	}
	b, err := simBackend(c)
	return b, func() {}, err
}
