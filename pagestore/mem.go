package pagestore

// OS memory: arenas of address space carved into spans of one length.

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// arenaBytes is the target size of one arena. Big enough that a 2 GiB store
// needs a few hundred mappings (vm.max_map_count is 65530 and a mapping per
// span would split on every munmap), small enough that an idle arena is only
// a little unused address space.
const arenaBytes = 8 << 20

// mapAnon maps n bytes of private anonymous memory, without swap reservation
// (pages are committed when touched) and without transparent huge pages: with
// THP on, touching one span could make 2 MiB resident, and freeing one span
// would split the huge page, so RSS would no longer follow MemUsed.
func mapAnon(n uintptr) (unsafe.Pointer, error) {
	p, err := unix.MmapPtr(-1, 0, nil, n, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("pagestore: mmap %d bytes: %w", n, err)
	}
	// Failure only means THP stays as configured; the memory is still usable.
	_ = unix.Madvise(unsafe.Slice((*byte)(p), n), unix.MADV_NOHUGEPAGE)
	return p, nil
}

func unmap(p unsafe.Pointer, n uintptr) {
	if err := unix.MunmapPtr(p, n); err != nil {
		// Only a bad address or length fails, i.e. our own bookkeeping is wrong.
		panic(fmt.Sprintf("pagestore: munmap %p+%d: %v", p, n, err))
	}
}

// discard gives the pages back to the OS but keeps the address range:
// MADV_DONTNEED drops them at once (MADV_FREE would leave them in RSS until
// the kernel is short of memory) and the next touch maps fresh zero pages.
//
// A swap server locks its memory (mlockall with MCL_FUTURE|MCL_ONFAULT, see
// swapsafe), and the kernel refuses MADV_DONTNEED on locked pages with
// EINVAL. Then the range is unlocked, discarded, and locked again on fault
// (mlock2 MLOCK_ONFAULT faults nothing in): the memory goes back to the OS
// and whatever is stored there later is locked again, so the store never
// pages out to the very swap device it backs.
func discard(p unsafe.Pointer, n uintptr) {
	b := unsafe.Slice((*byte)(p), n)
	err := unix.Madvise(b, unix.MADV_DONTNEED)
	if err == unix.EINVAL {
		if err = unix.Munlock(b); err == nil {
			if err = unix.Madvise(b, unix.MADV_DONTNEED); err == nil {
				err = lockOnFault(p, n)
			}
		}
	}
	if err != nil {
		panic(fmt.Sprintf("pagestore: discard %p+%d: %v", p, n, err))
	}
}

// lockOnFault is mlock2(MLOCK_ONFAULT), which x/sys/unix does not wrap.
func lockOnFault(p unsafe.Pointer, n uintptr) error {
	if _, _, e := unix.Syscall(unix.SYS_MLOCK2, uintptr(p), n, unix.MLOCK_ONFAULT); e != 0 {
		return fmt.Errorf("mlock2: %w", e)
	}
	return nil
}

// arena is one mapping holding perArena span slots of one length. A slot is
// either in use by a span, on the free stack (its pages already discarded),
// or at or beyond fresh (never touched since the arena was mapped).
type arena struct {
	base       unsafe.Pointer
	free       []uint32 // discarded slots, reused LIFO
	fresh      uint32
	used       uint32
	prev, next *arena // in the pool's list of arenas with a free slot
	listed     bool
}

// spanPool hands out spans of one length (pages) from arenas. Every class
// whose spans have that length shares the pool; its lock is taken only when
// a span is created or destroyed, never per object.
type spanPool struct {
	mu        sync.Mutex
	spanBytes uintptr
	perArena  uint32
	avail     *arena // arenas with a free slot
	arenas    map[*arena]struct{}

	// The reserve (reserve.go), in use when the store has Options.Reserve:
	// spans whose pages are faulted in, handed out by take. Reserved slots
	// count as used in their arena.
	reserve   bool
	res       []resSlot
	low, high int         // watermarks, in spans
	baseHigh  int         // high to start with and to shrink back to
	dry       atomic.Bool // a Put found res empty since the refiller last looked
	taken     uint64      // spans take handed out (under mu), for the idle decay
	takenSeen uint64      // taken at the refiller's last decay tick
}

func newSpanPool(pages uint32) *spanPool {
	sb := uintptr(pages) * PageSize
	per := uint32(arenaBytes / sb)
	return &spanPool{spanBytes: sb, perArena: per, arenas: map[*arena]struct{}{}}
}

func (p *spanPool) link(a *arena) {
	a.prev, a.next, a.listed = nil, p.avail, true
	if p.avail != nil {
		p.avail.prev = a
	}
	p.avail = a
}

func (p *spanPool) unlink(a *arena) {
	if a.prev != nil {
		a.prev.next = a.next
	} else {
		p.avail = a.next
	}
	if a.next != nil {
		a.next.prev = a.prev
	}
	a.prev, a.next, a.listed = nil, nil, false
}

// alloc returns the memory of one span, its arena and slot.
func (p *spanPool) alloc() (unsafe.Pointer, *arena, uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.avail
	if a == nil {
		base, err := mapAnon(uintptr(p.perArena) * p.spanBytes)
		if err != nil {
			return nil, nil, 0, err
		}
		a = &arena{base: base, free: make([]uint32, 0, p.perArena)}
		p.arenas[a] = struct{}{}
		p.link(a)
	}
	var slot uint32
	if n := len(a.free); n > 0 {
		slot = a.free[n-1]
		a.free = a.free[:n-1]
	} else {
		slot = a.fresh
		a.fresh++
	}
	a.used++
	if len(a.free) == 0 && a.fresh == p.perArena {
		p.unlink(a)
	}
	return unsafe.Add(a.base, uintptr(slot)*p.spanBytes), a, slot, nil
}

// release discards a span's pages and returns its slot, or, in reserve mode
// with the reserve below its high watermark, keeps the span (pages and all)
// in the reserve. The discard runs
// before the slot goes back on the free stack, outside the lock, so it never
// zeroes a span someone else has just been given. An arena left empty is
// unmapped unless it is the pool's last, which is kept (as address space
// only) so a class hovering at a span boundary does not mmap/munmap each time.
func (p *spanPool) release(a *arena, slot uint32) {
	if p.keep(a, slot) {
		return
	}
	p.drop(a, slot)
}

// drop discards a span's pages and returns its slot to its arena, unmapping
// an arena left empty (release's second half; the reserve's shrink uses it
// for reserved spans it no longer wants).
func (p *spanPool) drop(a *arena, slot uint32) {
	discard(unsafe.Add(a.base, uintptr(slot)*p.spanBytes), p.spanBytes)
	p.mu.Lock()
	defer p.mu.Unlock()
	a.free = append(a.free, slot) // cap is perArena: never grows
	a.used--
	if !a.listed {
		p.link(a)
	}
	if a.used == 0 && len(p.arenas) > 1 {
		p.unlink(a)
		delete(p.arenas, a)
		unmap(a.base, uintptr(p.perArena)*p.spanBytes)
	}
}

// close unmaps every arena. Nothing may use the pool afterwards.
func (p *spanPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a := range p.arenas {
		unmap(a.base, uintptr(p.perArena)*p.spanBytes)
	}
	p.arenas = map[*arena]struct{}{}
	p.avail = nil
}

// metaBytes estimates the pool's Go-heap bookkeeping.
func (p *spanPool) metaBytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	per := int64(unsafe.Sizeof(arena{})) + 4*int64(p.perArena) + 16 // + map entry
	return int64(len(p.arenas)) * per
}

// forEachArena calls fn with every mapped arena's range (tests use it to ask
// the kernel which pages are resident).
func (p *spanPool) forEachArena(fn func(base unsafe.Pointer, n uintptr)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a := range p.arenas {
		fn(a.base, uintptr(p.perArena)*p.spanBytes)
	}
}
