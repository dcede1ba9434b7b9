package pagestore

// Compaction: drain sparse spans into full ones and give the emptied spans back.

import (
	"runtime"
	"time"
)

// compactStepBytes bounds the object bytes one compaction step copies while
// it holds a class lock: 32 KiB is a few microseconds of memcpy, so Put, Read
// and Free of that class wait at most about that long.
const compactStepBytes = 32 << 10

// Compact moves objects out of the sparsest spans of every class into the
// fullest ones until no class has a span's worth of free slots left, and
// returns the emptied spans to the OS. It returns the pages freed (also added
// to Stats.PagesCompacted). It runs alongside Put, Read and Free: each class
// lock is held for one bounded step at a time.
func (s *Store) Compact() (pagesFreed int64) {
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	for i := range s.classes {
		if s.closed.Load() {
			break
		}
		pagesFreed += s.compactClass(&s.classes[i])
	}
	return pagesFreed
}

// compactClass drains one class. The span being drained (src) is kept from
// step to step until it is empty, so objects only ever flow one way and two
// equally sparse spans cannot pass objects back and forth.
func (s *Store) compactClass(c *class) (pagesFreed int64) {
	var src *span
	var srcID uint32
	for {
		c.mu.Lock()
		if c.freeable == 0 {
			c.mu.Unlock()
			return pagesFreed
		}
		t0 := time.Now()
		// Keep src only if it is still this class's span and still partial; a
		// Free may have emptied (and so dropped) it, or Puts filled it.
		if src == nil || int(srcID) >= len(c.spans) || c.spans[srcID] != src || src.group >= nGroups {
			src = c.sparsest()
			srcID = src.id
		}
		ar, arSlot := s.drain(c, src)
		if ar != nil {
			src = nil
		}
		s.updateFreeable(c)
		s.noteStep(time.Since(t0))
		c.mu.Unlock()
		if ar != nil {
			s.releaseSpan(c, ar, arSlot)
			pagesFreed += int64(c.pages)
			s.pagesCompacted.Add(int64(c.pages))
		}
		if s.closed.Load() {
			return pagesFreed
		}
		// Let the I/O that queued on the lock run before the next step.
		runtime.Gosched()
	}
}

// drain moves up to compactStepBytes of src's objects into the fullest other
// spans. If src ends up empty it is dropped and its memory location returned
// for release. Called with c.mu held, c.freeable > 0, which guarantees the
// other partial spans have room for all of src's objects.
func (s *Store) drain(c *class, src *span) (*arena, uint32) {
	moved := 0
	for i := uint32(0); i < src.fresh && src.inuse > 0 && moved < compactStepBytes; i++ {
		id := src.rev[i]
		if id&slotFree != 0 {
			continue
		}
		dst := c.fullestOther(src)
		if dst == nil {
			break
		}
		e := s.handles.entry(uint64(id))
		n := entSize(e.Load())
		slot := dst.allocSlot(id)
		copy(s.slotMem(c, dst, slot, n), s.slotMem(c, src, i, n))
		// Readers take the class lock and load the entry after it, so they see
		// either the old location (before this step) or the new one (after).
		e.Store(entEncode(dst.id, slot, n))
		src.freeSlot(i)
		c.regroup(dst)
		moved += n
	}
	if src.inuse == 0 {
		return c.dropSpan(src)
	}
	c.regroup(src)
	return nil, 0
}

// sparsest returns a span from the emptiest non-empty fullness group.
func (c *class) sparsest() *span {
	for g := 0; g < nGroups; g++ {
		if sp := c.groups[g]; sp != nil {
			return sp
		}
	}
	return nil
}

// fullestOther returns a span from the fullest partial group other than src.
func (c *class) fullestOther(src *span) *span {
	for g := nGroups - 1; g >= 0; g-- {
		for sp := c.groups[g]; sp != nil; sp = sp.next {
			if sp != src {
				return sp
			}
		}
	}
	return nil
}

func (s *Store) noteStep(d time.Duration) {
	if s.stepHook != nil {
		s.stepHook(d)
	}
	for {
		m := s.longestStep.Load()
		if int64(d) <= m || s.longestStep.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// autoThreshold is the reclaimable memory at which auto compaction runs.
func (s *Store) autoThreshold() int64 {
	t := int64(s.ratio * float64(s.memUsed.Load()))
	if t < s.minBytes {
		t = s.minBytes
	}
	return t
}

// kickAuto wakes the background compactor without ever blocking the caller.
func (s *Store) kickAuto() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// autoLoop is the background compactor: it sleeps until a Free pushes the
// reclaimable memory past the threshold, then compacts in bounded steps.
func (s *Store) autoLoop() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
		}
		if s.freeable.Load() < s.autoThreshold() {
			continue
		}
		s.autoRuns.Add(1)
		s.Compact()
	}
}
