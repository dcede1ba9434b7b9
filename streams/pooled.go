package streams

import "sync"

// pooled is the lock-pooled mode: one idle list under one lock, streams
// created on demand up to limit, callers waiting on a condition variable when
// none is idle.
type pooled struct {
	mu      sync.Mutex
	cond    sync.Cond // L is &mu
	idle    []*Stream // LIFO: the most recently used stream is cache-warm
	total   int       // streams in existence: idle, held, or being created
	limit   int
	waiters int
	polls   uint32
	gets    uint64
	waits   uint64
	dead    bool
}

func (p *Pool) getPooled() (*Stream, error) {
	pl := &p.pl
	pl.mu.Lock()
	waited := false
	var s *Stream
	for s == nil {
		if pl.dead {
			pl.mu.Unlock()
			return nil, ErrDestroyed
		}
		if n := len(pl.idle); n > 0 {
			s = pl.idle[n-1]
			pl.idle[n-1] = nil
			pl.idle = pl.idle[:n-1]
			break
		}
		if pl.total < pl.limit {
			// Reserve the stream, then allocate outside the lock.
			pl.total++
			pl.mu.Unlock()
			var err error
			if s, err = p.newStream(nil); err != nil {
				pl.mu.Lock()
				pl.total--
				pl.signalLocked()
				pl.mu.Unlock()
				return nil, err
			}
			pl.mu.Lock()
			break
		}
		if !waited {
			pl.waits++
			waited = true
		}
		pl.waiters++
		pl.cond.Wait()
		pl.waiters--
	}
	pl.gets++
	pl.polls++
	poll := pl.polls%pollEvery == 0
	pl.mu.Unlock()
	if !s.owner.CompareAndSwap(ownFree, ownHeld) {
		panic("streams: stream held by two callers")
	}
	if poll {
		p.poll()
	}
	return s, nil
}

func (p *Pool) putPooled(s *Stream) {
	pl := &p.pl
	pl.mu.Lock()
	if pl.dead || pl.total > pl.limit {
		// Surplus after SetMax shrank the pool, or the pool is gone.
		pl.total--
		pl.mu.Unlock()
		s.owner.Store(ownDead)
		p.closeStream(s)
		return
	}
	// No allocation: setLimit keeps cap(idle) >= limit >= total > len(idle).
	pl.idle = append(pl.idle, s)
	pl.signalLocked()
	pl.mu.Unlock()
}

func (pl *pooled) signalLocked() {
	if pl.waiters > 0 {
		pl.cond.Signal()
	}
}

// setLimit applies a new maximum, frees surplus idle streams and, for a
// preallocated pool being created, fills the idle list.
func (pl *pooled) setLimit(p *Pool, limit int, fill bool) error {
	var surplus []*Stream
	pl.mu.Lock()
	pl.limit = limit
	if cap(pl.idle) < limit {
		grown := make([]*Stream, len(pl.idle), limit)
		copy(grown, pl.idle)
		pl.idle = grown
	}
	for pl.total > limit && len(pl.idle) > 0 {
		n := len(pl.idle)
		surplus = append(surplus, pl.idle[n-1])
		pl.idle[n-1] = nil
		pl.idle = pl.idle[:n-1]
		pl.total--
	}
	pl.cond.Broadcast() // a larger limit lets waiters create streams
	pl.mu.Unlock()
	for _, s := range surplus {
		s.owner.Store(ownDead)
		p.closeStream(s)
	}
	if !fill {
		return nil
	}
	// Called from NewPool: nobody else can see the pool yet.
	for pl.total < limit {
		s, err := p.newStream(nil)
		if err != nil {
			return err
		}
		pl.idle = append(pl.idle, s)
		pl.total++
	}
	return nil
}

// kill marks the pool dead, wakes waiters and hands back the idle streams for
// closing; held streams are closed by their Put.
func (pl *pooled) kill() []*Stream {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.dead = true
	idle := pl.idle
	pl.total -= len(idle)
	pl.idle = nil
	pl.cond.Broadcast()
	return idle
}
