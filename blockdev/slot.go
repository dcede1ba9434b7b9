package blockdev

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/uzram/uzram/swapsafe"
	"golang.org/x/sys/unix"
)

// slot is one 4 KiB page's entry: 16 bytes, no pointers, so the table can
// live in mmap'ed memory that the GC never scans.
type slot struct {
	handle uint64 // pagestore handle, or the fill word of a same-filled page
	size   uint16 // stored object size in bytes (0 for same-filled/empty)
	flags  uint8
	comp   uint8  // id of the compressor that stored it (compTable)
	atime  uint32 // last access, seconds since the device was created
}

const (
	slotSame           uint8 = 1 << iota // handle holds the fill word
	slotHuge                             // stored raw, did not compress
	slotIdle                             // marked idle, cleared on access
	slotIncompressible                   // recompression gave up on it
	slotRecomp                           // picked by a recompression scan; any write or free clears it
)

const slotSize = int(unsafe.Sizeof(slot{}))

func init() {
	if slotSize != 16 {
		panic(fmt.Sprintf("blockdev: slot is %d bytes, want 16", slotSize))
	}
}

func (s *slot) empty() bool { return s.handle == 0 && s.flags&slotSame == 0 }

// slotTable is the mmap'ed array of slots.
type slotTable struct {
	mem   []byte
	slots []slot
}

func newSlotTable(n uint64, populate bool) (*slotTable, error) {
	if n == 0 {
		return &slotTable{}, nil
	}
	// MAP_POPULATE faults the whole table in now, as zram allocates its
	// table when disksize is set: a swap device's write path must not take a
	// page fault on its own table while the kernel is short of memory and
	// waiting for this very write (16 bytes per 4 KiB page: 4 MiB per GiB).
	// Without populate (memory not locked) a table page costs memory once a
	// page it describes is written; reads of unwritten pages map the
	// shared zero page.
	flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	if populate {
		flags |= unix.MAP_POPULATE
	}
	mem, err := unix.Mmap(-1, 0, int(n)*slotSize, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return nil, fmt.Errorf("blockdev: map slot table for %d pages: %w", n, err)
	}
	// Under mlockall(MCL_FUTURE|MCL_ONFAULT) (swapsafe) the new mapping is
	// lock-on-fault, and the kernel skips MAP_POPULATE for such mappings
	// (populate_vma_page_range): the table would fault page by page on the
	// write path. Touching every page faults it in (and locks it) now.
	if populate {
		swapsafe.Prefault(mem)
	}
	return &slotTable{mem: mem, slots: unsafe.Slice((*slot)(unsafe.Pointer(&mem[0])), n)}, nil
}

func (t *slotTable) bytes() int64 { return int64(len(t.mem)) }

func (t *slotTable) close() error {
	if t.mem == nil {
		return nil
	}
	t.slots = nil
	err := unix.Munmap(t.mem)
	t.mem = nil
	if err != nil {
		return fmt.Errorf("blockdev: unmap slot table: %w", err)
	}
	return nil
}

// lockStripes bounds the lock table: enough that 128+ concurrent requests on
// random pages rarely share a lock, small enough to stay in cache.
const lockStripes = 1 << 12

// pageLocks serialises operations on the same page without a device-wide
// lock. Each stripe sits on its own cache line so neighbours do not bounce.
type pageLocks [lockStripes]struct {
	sync.Mutex
	_ [64 - unsafe.Sizeof(sync.Mutex{})]byte
}

func (l *pageLocks) lock(page uint64)   { l[page&(lockStripes-1)].Lock() }
func (l *pageLocks) unlock(page uint64) { l[page&(lockStripes-1)].Unlock() }
func (l *pageLocks) tryLock(page uint64) bool {
	return l[page&(lockStripes-1)].TryLock()
}
