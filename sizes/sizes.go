// Package sizes parses and prints byte sizes the way admins write them
// (4G, 512M, 1.5T) and the way zramctl prints them.
package sizes

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var units = map[string]float64{
	"": 1, "B": 1,
	"K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10,
	"M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
	"G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30,
	"T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40,
}

// Parse reads "4096", "4K", "1.5G", "2TiB" (binary units, case-insensitive).
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	mul, ok := units[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G or T suffix, like 4G", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G or T suffix, like 4G", s)
	}
	b := v * mul
	if b > math.MaxInt64/2 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(math.Ceil(b)), nil
}

// RoundPage rounds n up to a whole number of 4 KiB pages.
func RoundPage(n int64) int64 { return (n + 4095) &^ 4095 }

// Human prints n as zramctl does: the largest binary unit that keeps the
// number at or above 1, with at most one decimal that is dropped when zero
// ("4G", "1.2G", "512M", "0B").
func Human(n int64) string {
	const u = "BKMGTPE"
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(u)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	s := strconv.FormatFloat(math.Round(v*10)/10, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + string(u[i])
}
