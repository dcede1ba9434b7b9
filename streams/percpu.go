package streams

import (
	"sync"
	"sync/atomic"
)

// slot is one CPU slot: a stream and the mutex held across the whole
// (de)compression, as zcomp_strm->lock in zram 6.15.
type slot struct {
	mu  sync.Mutex
	idx int
	// stream is nil until allocated (at creation or first appearance with
	// Prealloc, else on first Get), then kept until the pool is destroyed,
	// also while the slot is offline (zswap's 2026 lifetime rule). Written
	// only under resizeMu, and under mu once the slot is published.
	stream *Stream
	polls  uint32 // Gets since the last GOMAXPROCS poll, under mu
	gets   atomic.Uint64
	waits  atomic.Uint64
	// retries are Gets that locked this slot after it went offline.
	retries atomic.Uint64
	// Pad to 128 bytes (a size class of its own, so 128-aligned) so that
	// neighbouring slots' mutexes and counters never share a cache line,
	// even with adjacent-line prefetch. TestSlotSize checks the arithmetic.
	_ [72]byte
}

// slotTable is an immutable snapshot of the slot set, replaced on resize.
// slots only grows: a slot, once created, keeps its index and stream.
type slotTable struct {
	slots  []*slot
	online int // slots[:online] are online; online >= 1
	procs  int // GOMAXPROCS the table was built for
	limit  int // the configured maximum (SetMax, or GOMAXPROCS)
}

// maxRetries bounds retry-on-offline. Each retry means the slot set shrank
// between reading the table and locking the slot; after this many, Get blocks
// on slot 0, which is always online, so no caller spins forever.
const maxRetries = 4

// getPerCPU locks the stream of the caller's CPU slot: P id modulo the number
// of online slots. Ps beyond the slot count share slots, serialised by the
// slot mutex.
func (p *Pool) getPerCPU() (*Stream, error) {
	for try := 0; ; try++ {
		var id int
		if try < maxRetries {
			if id = currentP(); p.testPick != nil {
				id = p.testPick()
			}
		}
		t := p.table.Load()
		sl := t.slots[0]
		if try < maxRetries {
			if id >= t.procs {
				// A P the table does not know: GOMAXPROCS grew.
				p.resize()
				t = p.table.Load()
			}
			sl = t.slots[id%t.online]
		} else {
			p.fallbacks.Add(1)
		}
		if !sl.mu.TryLock() {
			sl.waits.Add(1)
			sl.mu.Lock()
		}
		// Retry on offline: the slot set may have shrunk while we were
		// getting here (and we may have moved to another P). Slot 0 is
		// never offline.
		if sl.idx >= p.table.Load().online {
			sl.retries.Add(1)
			sl.mu.Unlock()
			continue
		}
		s := sl.stream
		if s == nil {
			var err error
			if s, err = p.lazyStream(sl); err != nil {
				sl.mu.Unlock()
				return nil, err
			}
		}
		if !s.owner.CompareAndSwap(ownFree, ownHeld) {
			sl.mu.Unlock()
			if s.owner.Load()&ownDead != 0 {
				return nil, ErrDestroyed
			}
			panic("streams: stream held by two callers")
		}
		sl.gets.Add(1)
		if sl.polls++; sl.polls%pollEvery == 0 {
			p.poll()
		}
		return s, nil
	}
}

// lazyStream allocates sl's stream on its first Get (pools without
// Prealloc, or after a failed preallocation). Called with sl.mu held.
func (p *Pool) lazyStream(sl *slot) (*Stream, error) {
	p.resizeMu.Lock()
	defer p.resizeMu.Unlock()
	if p.dead.Load() {
		return nil, ErrDestroyed
	}
	s, err := p.newStream(sl)
	if err != nil {
		return nil, err
	}
	sl.stream = s
	return s, nil
}

// resizePerCPU publishes a table with min(limit, procs) online slots, making
// (and, with Prealloc, filling) slots that appear for the first time. Called
// with resizeMu held. Slots going offline keep their streams: a caller that
// holds one finishes normally, and a caller that locks one afterwards sees it
// offline and retries.
func (p *Pool) resizePerCPU(procs, limit int) error {
	online := min(limit, procs)
	old := p.table.Load()
	var slots []*slot
	if old != nil {
		if old.online == online && old.procs == procs && old.limit == limit {
			return nil
		}
		slots = old.slots
	}
	var firstErr error
	if online > len(slots) {
		grown := make([]*slot, online)
		copy(grown, slots)
		for i := len(slots); i < online; i++ {
			sl := &slot{}
			sl.idx = i
			if p.prealloc {
				// Not yet published: no lock needed.
				s, err := p.newStream(sl)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				sl.stream = s
			}
			grown[i] = sl
		}
		slots = grown
	}
	p.table.Store(&slotTable{slots: slots, online: online, procs: procs, limit: limit})
	return firstErr
}
