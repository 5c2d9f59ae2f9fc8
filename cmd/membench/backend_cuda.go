//go:build cuda

package main

import (
	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device/cuda"
)

// benchBackend opens the measured worker's backend: with cuda, the host's
// first GPU.
func benchBackend(name string) opener {
	if name == "cuda" {
		return func() (worker.Backend, func(), error) {
			b, err := cuda.New(cuda.Config{Devices: 1})
			if err != nil {
				return nil, nil, err
			}
			return b, b.Close, nil
		}
	}
	return simHost(1, 64<<30)
}
