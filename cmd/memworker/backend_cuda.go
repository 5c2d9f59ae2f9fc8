//go:build cuda

package main

import (
	"log/slog"

	"github.com/memworker/memworker/worker"
	"github.com/memworker/memworker/worker/device/cuda"
)

// openBackend opens the backend --backend names: auto takes the GPUs when
// there are any and falls back to sim otherwise.
func openBackend(c *cli, log *slog.Logger) (worker.Backend, func(), error) {
	if c.Backend != "sim" {
		cfg := cuda.Config{DisableVMM: !c.VMM}
		if c.CudaMemoryLimit != "" {
			limit, err := parseSize("--cuda-memory-limit", c.CudaMemoryLimit)
			if err != nil {
				return nil, nil, err
			}
			cfg.MemoryLimit = limit
		}
		b, err := cuda.New(cfg)
		if err == nil {
			return b, b.Close, nil
		}
		if c.Backend == "cuda" {
			return nil, nil, err
		}
		log.Warn("no usable GPU, using the sim backend", "err", err)
	}
	b, err := simBackend(c)
	return b, func() {}, err
}
