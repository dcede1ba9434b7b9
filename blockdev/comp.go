package blockdev

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

// maxComps bounds the compressors a device's pages can point at: a slot
// keeps a one-byte id. Four priorities plus old primaries still referenced
// by pages after an algorithm switch fit easily.
const maxComps = 256

// compressor is one streams.Pool with the id its pages record.
type compressor struct {
	id     uint8
	prio   int
	algo   string
	params string // as given, for display
	pool   *streams.Pool
}

// compTable maps slot ids to compressors and priorities to the compressor
// new pages of that priority use. A stored page holds a reference on its
// compressor's pool, as a zswap entry pins its pool: the pool lives until
// the last page it compressed is gone, so an id is reused only after its
// pool is released.
type compTable struct {
	mu      sync.Mutex // changes only; the I/O path reads atomics
	byID    [maxComps]atomic.Pointer[compressor]
	current [streams.MaxPriority + 1]atomic.Pointer[compressor]
	mode    streams.Mode
	streams int

	released atomic.Int64 // pools destroyed after their last page went
}

// install makes a pool for algo at prio and switches prio to it. The pool it
// replaces lives on until its pages are gone.
func (t *compTable) install(prio int, algo string, params zcomp.Params, paramText string) error {
	if prio < 0 || prio > streams.MaxPriority {
		return fmt.Errorf("blockdev: priority %d out of range 0..%d", prio, streams.MaxPriority)
	}
	// A swap device must not allocate on its write path: primary streams
	// exist up front; recompression streams only when first used.
	c, err := t.create(prio, algo, params, paramText, prio == 0)
	if err != nil {
		return fmt.Errorf("blockdev: %w", err)
	}
	if old := t.current[prio].Swap(c); old != nil {
		old.pool.Kill() // outside t.mu: Kill may release and call back into t
	}
	return nil
}

// create makes a compressor with a pool and a free id, holding the pool's
// creator reference; it is no priority's current one yet.
func (t *compTable) create(prio int, algo string, params zcomp.Params, paramText string, prealloc bool) (*compressor, error) {
	backend, err := zcomp.Lookup(algo)
	if err != nil {
		return nil, err
	}
	c := &compressor{prio: prio, algo: algo, params: paramText}
	t.mu.Lock()
	mode, n := t.mode, t.streams
	t.mu.Unlock()
	c.pool, err = streams.NewPool(streams.PoolConfig{
		Backend: backend, Params: params, Mode: mode, Max: n, Prealloc: prealloc,
		OnRelease: func() { t.release(c) },
	})
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.byID {
		if t.byID[i].Load() == nil {
			c.id = uint8(i) // before any page can record it
			t.byID[i].Store(c)
			return c, nil
		}
	}
	c.pool.Kill()
	return nil, fmt.Errorf("%d compressors still hold pages; rewrite or trim old data first", maxComps)
}

// remove takes a priority out of use (recomp_algorithm removal); its pages
// stay readable until they are gone.
func (t *compTable) remove(prio int) {
	if old := t.current[prio].Swap(nil); old != nil {
		old.pool.Kill()
	}
}

// release runs once a pool's last reference is gone, in the goroutine that
// dropped it (possibly holding a page lock): it takes only t.mu, which no
// page operation holds.
func (t *compTable) release(c *compressor) {
	t.mu.Lock()
	t.byID[c.id].CompareAndSwap(c, nil)
	t.mu.Unlock()
	t.released.Add(1)
}

// acquire pins the current compressor of prio for one request.
func (t *compTable) acquire(prio int) (*compressor, error) {
	for {
		c := t.current[prio].Load()
		if c == nil {
			return nil, fmt.Errorf("blockdev: no algorithm at priority %d", prio)
		}
		if c.pool.TryRef() {
			return c, nil
		}
		if t.current[prio].Load() == c {
			return nil, fmt.Errorf("blockdev: priority %d: %w", prio, streams.ErrDestroyed)
		}
		// Switched and released while we looked: take the new one.
	}
}

// setStreams changes the stream count of every live pool (the admin's
// --streams N at runtime).
func (t *compTable) setStreams(n int) {
	t.mu.Lock()
	t.streams = n
	var pools []*streams.Pool
	for i := range t.byID {
		if c := t.byID[i].Load(); c != nil {
			pools = append(pools, c.pool)
		}
	}
	t.mu.Unlock()
	for _, p := range pools {
		p.SetMax(n)
	}
}

func (t *compTable) close() {
	for prio := range t.current {
		t.remove(prio)
	}
}

// CompressorInfo describes one compressor a device holds.
type CompressorInfo struct {
	ID        int    `json:"id"`
	Priority  int    `json:"priority"`
	Algorithm string `json:"algorithm"`
	Params    string `json:"params,omitempty"`
	Current   bool   `json:"current"` // new pages of its priority use it
	Streams   int    `json:"streams"`
}

func (t *compTable) info() []CompressorInfo {
	var out []CompressorInfo
	for i := range t.byID {
		c := t.byID[i].Load()
		if c == nil {
			continue
		}
		out = append(out, CompressorInfo{
			ID: i, Priority: c.prio, Algorithm: c.algo, Params: c.params,
			Current: t.current[c.prio].Load() == c, Streams: int(c.pool.Stats().Allocated),
		})
	}
	return out
}
