package worker

import (
	"testing"
	"time"

	"github.com/memworker/memworker/worker/device/sim"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		ok     bool
	}{
		{"defaults", func(*Config) {}, true},
		{"truth read on every request", func(c *Config) { c.TruthMaxAge = 0 }, true},
		{"negative truth max age", func(c *Config) { c.TruthMaxAge = -time.Millisecond }, false},
		{"no telemetry max age", func(c *Config) { c.TelemetryMaxAge = 0 }, false},
		{"no read handler", func(c *Config) { c.ReadHandlers = 0 }, false},
		{"no op timeout", func(c *Config) { c.OpTimeout = 0 }, false},
		{"bad node", func(c *Config) { c.Node = "a.b" }, false},
		{"no backend", func(c *Config) { c.Backend = nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Node, c.Backend = "n1", sim.New(sim.Default(1, 1<<30))
			tt.change(&c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
	if n := DefaultReadHandlers(); n < 1 || n > 4 {
		t.Errorf("DefaultReadHandlers() = %d, want 1 to 4", n)
	}
}
