package pagestore

// The handle table: handle -> where the object lives now.

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

const (
	hChunkShift = 16
	hChunkLen   = 1 << hChunkShift // entries per chunk: 512 KiB of table
	hDirLen     = 1 << 12
	maxHandles  = hDirLen * hChunkLen // 2^28 objects: a 1 TiB device of 4 KiB pages
	hChunkBytes = hChunkLen * 8

	// Entry layout. A live entry has entLive set and says where the object is:
	//   bits  0..11  size-1 (1..4096)
	//   bits 12..23  slot within the span
	//   bits 24..55  span id within the object's class
	//   bit  63      entLive
	// A free entry has entLive clear and holds the next free handle (0 = none).
	// The class is not stored: it follows from the size, which never changes.
	entLive   = 1 << 63
	entSlotSh = 12
	entSpanSh = 24
	entMask12 = 1<<12 - 1
)

var errHandles = errors.New("pagestore: handle table full")

func entEncode(spanID, slot uint32, size int) uint64 {
	return entLive | uint64(spanID)<<entSpanSh | uint64(slot)<<entSlotSh | uint64(size-1)
}
func entSize(e uint64) int    { return int(e&entMask12) + 1 }
func entSlot(e uint64) uint32 { return uint32(e>>entSlotSh) & entMask12 }
func entSpan(e uint64) uint32 { return uint32(e >> entSpanSh) }

type hchunk [hChunkLen]atomic.Uint64

// handleTable is a two-level array of 8-byte entries in mmap'd memory: no Go
// pointers per object, nothing for the GC to scan, and chunks never move, so
// readers find an entry without a lock while the table grows. Handle ids are
// recycled through a free list threaded through the free entries themselves.
type handleTable struct {
	mu       sync.Mutex // guards next, freeHead, live and chunk creation
	next     uint32     // lowest id never handed out
	freeHead uint32
	live     int64
	chunks   atomic.Int64

	// Reserve mode (reserve.go): ids come only from chunks [0, ready), which
	// the refiller has faulted in; gen counts resets, which discard chunks.
	prefault bool
	ready    uint32
	gen      uint32
	dir      [hDirLen]atomic.Pointer[hchunk]
}

func (t *handleTable) init() { t.next = 1 } // id 0 is never a handle

// entry returns the table cell of id. A handle that was never issued panics
// here, with a message, rather than somewhere inside a span.
func (t *handleTable) entry(id uint64) *atomic.Uint64 {
	if id == 0 || id >= maxHandles {
		panic(fmt.Sprintf("pagestore: invalid handle %#x", id))
	}
	c := t.dir[id>>hChunkShift].Load()
	if c == nil {
		panic(fmt.Sprintf("pagestore: invalid handle %#x", id))
	}
	return &c[id&(hChunkLen-1)]
}

// live returns the live entry of h, panicking on a freed handle: a stale
// handle would otherwise read or free someone else's object.
func (t *handleTable) liveEntry(h Handle) (*atomic.Uint64, uint64) {
	e := t.entry(uint64(h))
	v := e.Load()
	if v&entLive == 0 {
		panic(fmt.Sprintf("pagestore: use of free handle %#x", uint64(h)))
	}
	return e, v
}

// alloc returns a free id. In reserve mode it fails with errRefill rather
// than touch a chunk the refiller has not faulted in, and reports (kick) when
// the next chunk is now needed ahead.
func (t *handleTable) alloc() (id uint32, kick bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if id := t.freeHead; id != 0 {
		t.freeHead = uint32(t.entry(uint64(id)).Load())
		t.live++
		return id, false, nil
	}
	id = t.next
	if id >= maxHandles {
		return 0, false, errHandles
	}
	if t.prefault {
		if id>>hChunkShift >= t.ready {
			return 0, true, errRefill
		}
		t.next++
		t.live++
		return id, id&(hChunkLen-1) == 0, nil
	}
	if t.dir[id>>hChunkShift].Load() == nil {
		p, err := mapAnon(hChunkBytes)
		if err != nil {
			return 0, false, fmt.Errorf("pagestore: growing handle table: %w", err)
		}
		t.dir[id>>hChunkShift].Store((*hchunk)(p))
		t.chunks.Add(1)
	}
	t.next++
	t.live++
	return id, false, nil
}

// resetAfter is how many ids must have been issued before an empty table is
// worth discarding: below it, the table is a few pages and a store that
// empties and refills often would pay a syscall and page faults each time.
const resetAfter = 8192

func (t *handleTable) free(id uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.entry(uint64(id)).Store(uint64(t.freeHead))
	t.freeHead = id
	t.live--
	if t.live == 0 && t.next > resetAfter {
		// Everything is free: give the table's pages back and start again from
		// id 1, so an emptied store holds no table memory. Nothing reads a free
		// entry without this lock, and the chunks stay mapped for lock-free
		// readers of later handles. In reserve mode the first chunk stays
		// faulted in: the next Put uses it, and must not fault.
		first := 0
		if t.prefault {
			first = 1
			t.ready = min(t.ready, 1)
			t.gen++
		}
		for i := first; i < hDirLen; i++ {
			if c := t.dir[i].Load(); c != nil {
				discard(unsafe.Pointer(c), hChunkBytes)
			}
		}
		t.freeHead = 0
		t.next = 1
	}
}

// residentBytes is the table's mapped size (an upper bound of what it holds).
func (t *handleTable) mappedBytes() int64 { return t.chunks.Load() * hChunkBytes }

func (t *handleTable) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.dir {
		if c := t.dir[i].Load(); c != nil {
			unmap(unsafe.Pointer(c), hChunkBytes)
			t.dir[i].Store(nil)
		}
	}
	t.chunks.Store(0)
}
