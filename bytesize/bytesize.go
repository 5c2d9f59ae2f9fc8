// Package bytesize reads and prints memory sizes in binary units, the one
// rule memworker, memctl and their errors share.
package bytesize

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
)

// Help states the rule Parse follows, for command-line help.
const Help = "sizes are binary: 512M, 512MB and 512MiB all mean 512 MiB; a bare number is bytes"

// Parse reads a memory size: a number (fractions allowed) and a unit
// of B, K, M, G, T or P, with or without a trailing B and an i, in any
// letter case. GPU memory is counted in binary units, so every unit is a
// power of 1024: 2G, 2GB and 2GiB are all 2 GiB (never the decimal 2e9 a
// general-purpose parser reads from 2GB).
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = strings.TrimSpace(t[:i]), strings.ToUpper(strings.TrimSpace(t[i:]))
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("size %q: want a number and a unit such as 512MiB or 2G", s)
	}
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	exp := 0
	if unit != "" {
		if exp = strings.Index("KMGTP", unit) + 1; len(unit) != 1 || exp == 0 {
			return 0, fmt.Errorf("size %q: unknown unit; %s", s, Help)
		}
	}
	n := v * math.Pow(1024, float64(exp))
	if n < 1 || n > 1<<62 || math.IsNaN(n) {
		return 0, fmt.Errorf("size %q: out of range", s)
	}
	return int64(n), nil
}

// Format prints n in binary units with the exact byte count, as in
// "1.5 GiB (1610612736 bytes)", using the same rounding as memctl's tables
// (go-humanize's IBytes).
func Format(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%s (%d bytes)", humanize.IBytes(uint64(n)), n)
}
