package blockdev

import (
	"fmt"
	"time"

	"github.com/uzram/uzram/zcomp"
)

// The device's runtime knobs, named after zram's sysfs files.

// SetMemLimit sets mem_limit in bytes (0: none). Lowering it below what is
// held frees nothing: new writes that need memory fail until usage drops.
func (d *Device) SetMemLimit(n int64) error {
	if n < 0 {
		return fmt.Errorf("blockdev: mem_limit must not be negative, got %d", n)
	}
	d.store.SetLimit(n)
	return nil
}

// ResetMemUsedMax resets mem_used_max to the current usage (zram: write 0).
func (d *Device) ResetMemUsedMax() { d.store.ResetMaxUsed() }

// Compact moves stored objects out of sparse spans and returns the memory
// it frees to the OS; it returns the pages freed.
func (d *Device) Compact() int64 { return d.store.Compact() }

// SetAlgorithm switches the primary algorithm at runtime (zram cannot; zswap
// can): new writes use it at once, pages already stored keep decompressing
// with the pool that compressed them until they are rewritten or freed.
func (d *Device) SetAlgorithm(algo string, p zcomp.Params, text string) error {
	return d.comps.install(0, algo, p, text)
}

// SetRecompAlgorithm sets the secondary algorithm at priority 1..3 (zram's
// recomp_algorithm "algo=NAME priority=N").
func (d *Device) SetRecompAlgorithm(prio int, algo string, p zcomp.Params, text string) error {
	if prio < 1 {
		return fmt.Errorf("blockdev: recompression priority must be 1..3, got %d", prio)
	}
	return d.comps.install(prio, algo, p, text)
}

// SetStreams changes the number of compression streams (0: one per CPU).
func (d *Device) SetStreams(n int) error {
	if n < 0 {
		return fmt.Errorf("blockdev: stream count must not be negative, got %d", n)
	}
	d.comps.setStreams(n)
	return nil
}

// Streams is the configured stream count (0: one per CPU).
func (d *Device) Streams() int {
	d.comps.mu.Lock()
	defer d.comps.mu.Unlock()
	return d.comps.streams
}

// Compressors lists the device's compressors, including old primaries that
// still hold pages.
func (d *Device) Compressors() []CompressorInfo { return d.comps.info() }

// CompressorsReleased counts pools destroyed after their last page went.
func (d *Device) CompressorsReleased() int64 { return d.comps.released.Load() }

// MarkIdle marks stored pages idle: all of them (age 0) or those not accessed
// for at least age (zram's idle file: "all" or seconds). Same-filled pages are
// never marked: recompressing them is pointless. It returns how many pages
// are now marked.
func (d *Device) MarkIdle(age time.Duration) int64 {
	now := d.now()
	cutoff := uint32(age / time.Second)
	var marked int64
	for i := range d.slots {
		page := uint64(i)
		d.locks.lock(page)
		s := &d.slots[i]
		if s.handle != 0 && s.flags&slotSame == 0 && now-s.atime >= cutoff {
			s.flags |= slotIdle
			marked++
		}
		d.locks.unlock(page)
	}
	return marked
}

// DebugStat formats zram's debug_stat ("version: 1", then "0" and
// miss_free). miss_free counts slot frees that lost a trylock race in zram;
// here a free always waits for the page lock, so it stays 0.
func (d *Device) DebugStat() string {
	return fmt.Sprintf("version: %d\n0 %8d\n", 1, 0)
}
