// Package hostmem reads the host's memory figures from /proc: the fields of
// /proc/meminfo and vm.min_free_kbytes.
package hostmem

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MeminfoKiB reads one field of /proc/meminfo ("MemTotal", "MemAvailable"), in KiB.
func MeminfoKiB(field string) (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("reading host memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kib, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kib, nil
				}
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/meminfo", field)
}

// RAMMiB is the host's memory (MemTotal), in MiB.
func RAMMiB() (float64, error) {
	kib, err := MeminfoKiB("MemTotal")
	return float64(kib) / 1024, err
}

// MinFreeKiB reads vm.min_free_kbytes: the kernel's min watermark, summed
// over zones, below which only real-time and reclaiming tasks allocate.
func MinFreeKiB() (uint64, error) {
	b, err := os.ReadFile("/proc/sys/vm/min_free_kbytes")
	if err != nil {
		return 0, fmt.Errorf("reading vm.min_free_kbytes: %w", err)
	}
	kib, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("vm.min_free_kbytes: %w", err)
	}
	return kib, nil
}
