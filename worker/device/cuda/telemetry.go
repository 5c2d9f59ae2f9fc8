//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/memworker/memworker/worker/device"
)

// telemetry reads NVML. When libnvidia-ml cannot be loaded it is off and
// the backend falls back to the driver's figures, with no error.
type telemetry struct {
	mu sync.Mutex
	on bool
}

func openTelemetry() *telemetry {
	t := &telemetry{}
	t.on = nvml.Init() == nvml.SUCCESS
	return t
}

func (t *telemetry) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.on {
		_ = nvml.Shutdown()
		t.on = false
	}
}

// Processes lists the processes using dev's memory and the memory the
// driver reserves for itself. Without NVML it returns nothing.
func (b *Backend) Processes(_ context.Context, dev int) ([]device.Process, int64, error) {
	g, err := b.gpu(dev)
	if err != nil {
		return nil, 0, err
	}
	t := b.nvml
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.on || g.info.UUID == "" {
		return nil, 0, nil
	}
	h, ret := nvml.DeviceGetHandleByUUID(g.info.UUID)
	if ret != nvml.SUCCESS {
		return nil, 0, fmt.Errorf("nvml: device %s: %v", g.info.UUID, nvml.ErrorString(ret))
	}
	var reserved int64
	if mem, ret := h.GetMemoryInfo_v2(); ret == nvml.SUCCESS {
		reserved = int64(mem.Reserved)
	}
	procs, ret := h.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS {
		return nil, reserved, fmt.Errorf("nvml: processes of %s: %v", g.info.UUID, nvml.ErrorString(ret))
	}
	out := make([]device.Process, 0, len(procs))
	for _, p := range procs {
		out = append(out, device.Process{PID: int(p.Pid), UsedBytes: int64(p.UsedGpuMemory)})
	}
	return out, reserved, nil
}
