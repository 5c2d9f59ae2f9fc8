package bytesize_test

import (
	"testing"

	"github.com/memworker/memworker/bytesize"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{
		"1024": 1024, "2G": 2 << 30, "2g": 2 << 30, "2GB": 2 << 30, "2GiB": 2 << 30, "2 gib": 2 << 30,
		"512M": 512 << 20, "512MB": 512 << 20, "1.5G": 3 << 29, "4K": 4096, "1T": 1 << 40, "16B": 16,
	} {
		if got, err := bytesize.Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "2X", "2GX", "-1G", "0", "G", "1e30"} {
		if n, err := bytesize.Parse(in); err == nil {
			t.Errorf("Parse(%q) = %d, want an error", in, n)
		}
	}
}

func TestFormat(t *testing.T) {
	for n, want := range map[int64]string{
		512: "512 B", 1 << 30: "1.0 GiB (1073741824 bytes)", 3 << 29: "1.5 GiB (1610612736 bytes)",
	} {
		if got := bytesize.Format(n); got != want {
			t.Errorf("Format(%d) = %q, want %q", n, got, want)
		}
	}
}
