package streams

import (
	"fmt"
	"sync/atomic"
)

// MaxPriority is the highest stream priority: 0 is the device's primary
// algorithm, 1..MaxPriority the secondary (recompression) algorithms.
const MaxPriority = 3

// Set holds a device's pools by priority. The zero value is an empty set.
//
// A Set owns the creator's reference of each pool installed in it: SetPool
// replaces a pool and kills the old one, which lives on while pages it
// compressed (or requests using it) still hold references, then is destroyed.
type Set struct {
	pools [MaxPriority + 1]atomic.Pointer[Pool]
}

func checkPrio(prio int) error {
	if prio < 0 || prio > MaxPriority {
		return fmt.Errorf("streams: priority %d out of range 0..%d", prio, MaxPriority)
	}
	return nil
}

// SetPool installs p at priority prio, taking over its creator's reference,
// and kills the pool it replaces. p may be nil to remove the priority.
func (s *Set) SetPool(prio int, p *Pool) error {
	if err := checkPrio(prio); err != nil {
		return err
	}
	if old := s.pools[prio].Swap(p); old != nil && old != p {
		old.Kill()
	}
	return nil
}

// Pool returns the pool at priority prio, or nil. It takes no reference: use
// TryRef on the result to pin it.
func (s *Set) Pool(prio int) *Pool {
	if checkPrio(prio) != nil {
		return nil
	}
	return s.pools[prio].Load()
}

// Get returns a stream of the pool at priority prio, holding a reference on
// that pool until Put, so a concurrent SetPool cannot destroy it under the
// caller. Pin the pool for longer (pages it compressed) with
// stream.Pool().Ref() before Put.
func (s *Set) Get(prio int) (*Stream, error) {
	if err := checkPrio(prio); err != nil {
		return nil, err
	}
	for {
		p := s.pools[prio].Load()
		if p == nil {
			return nil, fmt.Errorf("streams: no pool at priority %d", prio)
		}
		if !p.TryRef() {
			if s.pools[prio].Load() == p {
				// Killed by someone other than SetPool and already
				// released: no newer pool to move on to.
				return nil, fmt.Errorf("streams: priority %d: %w", prio, ErrDestroyed)
			}
			continue // replaced and released meanwhile: take the new one
		}
		st, err := p.Get()
		if err != nil {
			p.Unref()
			return nil, fmt.Errorf("streams: priority %d (%s): %w", prio, p.Algorithm(), err)
		}
		return st, nil
	}
}

// Put returns a stream from Get and drops the reference Get took.
func (s *Set) Put(st *Stream) {
	p := st.pool
	p.Put(st)
	p.Unref()
}

// Close removes and kills every pool in the set.
func (s *Set) Close() {
	for prio := range s.pools {
		if old := s.pools[prio].Swap(nil); old != nil {
			old.Kill()
		}
	}
}
