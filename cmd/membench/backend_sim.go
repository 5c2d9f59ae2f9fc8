//go:build !cuda

package main

import (
	"errors"

	"github.com/memworker/memworker/worker"
)

// benchBackend opens the measured worker's backend. This build has no CUDA.
func benchBackend(name string) opener {
	if name == "cuda" {
		return func() (worker.Backend, func(), error) {
			return nil, nil, errors.New("--backend cuda: this membench was built without CUDA; build it with scripts/cuda-build.sh")
		}
	}
	return simHost(1, 64<<30)
}
