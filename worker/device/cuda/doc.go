// Package cuda is the backend for real NVIDIA GPUs, built with the tag
// cuda: gorgonia.org/cu for contexts, memory information, device memory and
// copies; a small cgo file of our own for page-locked host memory and CUDA
// IPC handles, which gorgonia/cu does not wrap; github.com/NVIDIA/go-nvml
// for telemetry (other processes' use, memory the driver reserves).
//
// CUDA contexts are current per OS thread, so each device has one goroutine
// locked to an OS thread with the device's primary context current; every
// call for the device runs there. Without the tag this package is empty and
// the default build needs no CUDA.
package cuda
