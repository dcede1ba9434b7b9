package blockdev

import (
	"fmt"
	"strings"

	"github.com/uzram/uzram/streams"
)

// Stats is a snapshot of a device's figures, with zram's meanings.
type Stats struct {
	// mm_stat
	OrigDataSize   int64 // bytes of data stored, before compression (pages stored x 4 KiB)
	ComprDataSize  int64 // bytes of compressed objects
	MemUsedTotal   int64 // bytes of store memory held
	MemLimit       int64 // 0: no limit
	MemUsedMax     int64 // peak MemUsedTotal (resettable)
	SamePages      int64 // same-filled pages (no store memory)
	PagesCompacted int64 // pages given back by compaction
	HugePages      int64 // pages stored raw
	HugePagesSince int64 // pages ever stored raw
	// io_stat
	FailedReads  int64
	FailedWrites int64
	InvalidIO    int64
	NotifyFree   int64 // pages freed by TRIM / WRITE_ZEROES
	// beyond zram
	PagesStored   int64
	Reads, Writes int64 // requests
	// PartialWrites counts writes that stored a leading part and left the
	// rest for the kernel to send again (WritePartial), store memory being
	// short.
	PartialWrites  int64
	SlotTableBytes int64 // the slot table's own size, kept apart from the store
	StoreMetaBytes int64 // the store's Go-heap bookkeeping
	// StoreReserveBytes is store memory faulted in ahead of writes, outside
	// MemUsedTotal (pagestore's reserve): resident, not yet holding pages.
	StoreReserveBytes int64
	// StoreReserveWaits counts writes that found the reserve empty and
	// waited for the refiller; StoreNoMem those refused after waiting
	// (ENOSPC: the kernel keeps the page and retries).
	StoreReserveWaits, StoreNoMem int64
	// recompression (recompress.go)
	IncompressiblePages int64 // pages recompression gave up on, still stored
	// PriorityPages and PriorityBytes: compressed pages (huge included, at
	// priority 0; same-filled excluded) and their bytes per priority.
	PriorityPages [streams.MaxPriority + 1]int64
	PriorityBytes [streams.MaxPriority + 1]int64
	Recomp        RecompressTotals
}

// Stats returns the device's current figures.
func (d *Device) Stats() Stats {
	ss := d.store.Stats()
	c := &d.stats
	pages := c.pagesStored.Load()
	st := Stats{
		OrigDataSize:   pages * PageSize,
		ComprDataSize:  c.comprDataSize.Load(),
		MemUsedTotal:   ss.MemUsed,
		MemLimit:       d.store.Limit(),
		MemUsedMax:     ss.MemUsedMax,
		SamePages:      c.samePages.Load(),
		PagesCompacted: ss.PagesCompacted,
		HugePages:      c.hugePages.Load(),
		HugePagesSince: c.hugePagesSince.Load(),
		FailedReads:    c.failedReads.Load(),
		FailedWrites:   c.failedWrites.Load(),
		InvalidIO:      c.invalidIO.Load(),
		NotifyFree:     c.notifyFree.Load(),
		PagesStored:    pages,
		Reads:          c.reads.Load(),
		Writes:         c.writes.Load(),
		PartialWrites:  c.partialWrites.Load(),
		SlotTableBytes: d.table.bytes(),
		StoreMetaBytes: ss.MetadataBytes,

		IncompressiblePages: c.incompressible.Load(),
		Recomp:              d.RecompressTotals(),
	}
	st.StoreReserveBytes, st.StoreReserveWaits, st.StoreNoMem = ss.ReserveBytes, ss.ReserveWaits, ss.NoMemFails
	// Priority 0 is the rest, so the write path keeps no counter of its own.
	st.PriorityPages[0] = pages - st.SamePages
	st.PriorityBytes[0] = st.ComprDataSize
	for prio := 1; prio <= streams.MaxPriority; prio++ {
		st.PriorityPages[prio] = c.prioPages[prio].Load()
		st.PriorityBytes[prio] = c.prioBytes[prio].Load()
		st.PriorityPages[0] -= st.PriorityPages[prio]
		st.PriorityBytes[0] -= st.PriorityBytes[prio]
	}
	return st
}

// RecompStat formats the recompression figures in mm_stat's style, one line:
// incompressible_pages, then pages and bytes at priorities 0..3, then the
// totals: runs background_runs scanned attempted recompressed skipped
// incompressible failed bytes_saved mem_saved cpu_ms.
func (s Stats) RecompStat() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%8d", s.IncompressiblePages)
	for prio := range s.PriorityPages {
		fmt.Fprintf(&b, " %8d %8d", s.PriorityPages[prio], s.PriorityBytes[prio])
	}
	r := s.Recomp
	fmt.Fprintf(&b, " %8d %8d %8d %8d %8d %8d %8d %8d %8d %8d %8d\n",
		r.Runs, r.BackgroundRuns, r.Scanned, r.Attempted, r.Recompressed, r.Skipped,
		r.Incompressible, r.Failed, r.BytesSaved, r.MemSaved, r.CPU.Milliseconds())
	return b.String()
}

// MMStat formats the figures as zram's mm_stat file, column for column.
func (s Stats) MMStat() string {
	return fmt.Sprintf("%8d %8d %8d %8d %8d %8d %8d %8d %8d\n",
		s.OrigDataSize, s.ComprDataSize, s.MemUsedTotal, s.MemLimit, s.MemUsedMax,
		s.SamePages, s.PagesCompacted, s.HugePages, s.HugePagesSince)
}

// IOStat formats the figures as zram's io_stat file.
func (s Stats) IOStat() string {
	return fmt.Sprintf("%8d %8d %8d %8d\n", s.FailedReads, s.FailedWrites, s.InvalidIO, s.NotifyFree)
}

// Verify recomputes the statistics from the slot table and reports the
// first figure that disagrees. It reads the slots without their locks: call
// it only while no request is in flight (after a restore, say, or in tests).
func (d *Device) Verify() error {
	var stored, same, huge, compr, incompressible int64
	var prioPages, prioBytes [len(Stats{}.PriorityPages)]int64
	for i := range d.slots {
		s := &d.slots[i]
		switch {
		case s.flags&slotSame != 0:
			stored++
			same++
		case s.handle != 0:
			stored++
			compr += int64(s.size)
			if s.flags&slotHuge != 0 {
				huge++
			}
			if s.flags&slotIncompressible != 0 {
				incompressible++
			}
			prio := d.slotPrio(s)
			prioPages[prio]++
			prioBytes[prio] += int64(s.size)
		}
	}
	st := d.Stats()
	if st.PagesStored != stored || st.SamePages != same || st.HugePages != huge || st.ComprDataSize != compr {
		return fmt.Errorf("blockdev: %s: counters (stored %d same %d huge %d compr %d) disagree with the slot table (stored %d same %d huge %d compr %d)",
			d.name, st.PagesStored, st.SamePages, st.HugePages, st.ComprDataSize, stored, same, huge, compr)
	}
	if st.IncompressiblePages != incompressible || st.PriorityPages != prioPages || st.PriorityBytes != prioBytes {
		return fmt.Errorf("blockdev: %s: recompression counters disagree with the slot table: incompressible %d (slots %d), pages per priority %v (slots %v), bytes %v (slots %v)",
			d.name, st.IncompressiblePages, incompressible, st.PriorityPages, prioPages, st.PriorityBytes, prioBytes)
	}
	if st.OrigDataSize != stored*PageSize {
		return fmt.Errorf("blockdev: %s: orig_data_size %d, want %d", d.name, st.OrigDataSize, stored*PageSize)
	}
	return nil
}
