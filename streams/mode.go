package streams

import "fmt"

// Mode selects how a Pool hands out compression streams.
type Mode int

const (
	// PerCPU keeps one stream per CPU slot (the Go runtime's P), each behind
	// its own mutex: zram's design since Linux 6.15.
	PerCPU Mode = iota
	// Pooled keeps one idle list under one lock and creates streams on demand
	// up to the maximum: the lock-pooled design of the 2025 zram patch.
	Pooled
)

// DefaultMode is the mode `uzram serve` uses when --stream-mode is not given.
// It is the mode that won the benchmarks in the package doc on the 2-vCPU
// machine uzram is developed on.
const DefaultMode = PerCPU

// String returns the --stream-mode spelling of m.
func (m Mode) String() string {
	switch m {
	case PerCPU:
		return "percpu"
	case Pooled:
		return "pool"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses a --stream-mode value: "percpu" or "pool".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "percpu":
		return PerCPU, nil
	case "pool":
		return Pooled, nil
	}
	return 0, fmt.Errorf("streams: unknown stream mode %q (want percpu or pool)", s)
}
