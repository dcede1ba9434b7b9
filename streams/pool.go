package streams

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/uzram/uzram/zcomp"
)

// ErrDestroyed is returned by Get on a pool whose last reference is gone.
var ErrDestroyed = errors.New("streams: pool destroyed")

// MaxPriority is the highest compressor priority a device has, zram's
// ZRAM_MAX_COMPS - 1: 0 is the primary algorithm, 1..MaxPriority the
// secondary (recompression) algorithms, one pool each.
const MaxPriority = 3

// Stream is one compression context with its scratch buffer. The holder (the
// caller between Get and Put) owns both exclusively.
type Stream struct {
	Ctx zcomp.Context
	Buf []byte // scratch owned by the holder, len 2*zcomp.PageSize

	pool  *Pool
	slot  *slot         // PerCPU: the slot whose mutex the holder holds; nil in Pooled mode
	owner atomic.Uint32 // ownFree / ownHeld, | ownDead once the pool is destroyed
}

// Owner states. The field is the invariant check "never held twice" and the
// handshake with destroy: whoever sees the stream free last closes it.
const (
	ownFree uint32 = 0
	ownHeld uint32 = 1
	ownDead uint32 = 2
)

// Pool returns the pool the stream belongs to, so the caller can Ref it for
// the pages the stream compressed.
func (s *Stream) Pool() *Pool { return s.pool }

// PoolConfig configures NewPool.
type PoolConfig struct {
	Backend zcomp.Backend
	Params  zcomp.Params
	Mode    Mode
	// Max is the number of streams (Pooled) or CPU slots (PerCPU); 0 follows
	// runtime.GOMAXPROCS(0), including later changes.
	Max int
	// Prealloc allocates the streams now (primary pools: a swap device must
	// not allocate on its write path) instead of on first use (secondary
	// recompression pools, which are often never used).
	Prealloc bool
	// OnRelease is called once, after Kill and the last Unref, in the
	// goroutine that dropped the last reference, with no pool lock held.
	OnRelease func()
}

// Pool is the streams of one algorithm configuration, handed out by Get and
// returned by Put, and kept alive by a sharded reference count.
//
// Get does not take a reference: callers hold one (their own, one taken with
// TryRef, or the creator's) for as long as they use the stream.
type Pool struct {
	backend   zcomp.Backend
	params    zcomp.Params
	mode      Mode
	prealloc  bool
	onRelease func()
	ref       ref

	// resizeMu serialises resizes, lazy PerCPU stream creation and destroy.
	// It is never held while calling out of the package.
	resizeMu sync.Mutex
	maxCfg   atomic.Int64 // SetMax value; 0 follows GOMAXPROCS
	procs    atomic.Int64 // GOMAXPROCS at the last resize
	dead     atomic.Bool

	table atomic.Pointer[slotTable] // PerCPU
	pl    pooled                    // Pooled

	allocated atomic.Int64
	created   atomic.Uint64
	freed     atomic.Uint64
	fallbacks atomic.Uint64

	// testPick, if set, replaces the P id in PerCPU Get, so tests can
	// stage the offline race deterministically.
	testPick func() int
}

// pollEvery is how many Gets (per slot, or per pool in Pooled mode) pass
// between GOMAXPROCS polls. runtime.GOMAXPROCS(0) takes the scheduler lock,
// about 20 ns: once per 1024 Gets costs nothing measurable, and a cgroup limit
// change is seen within a fraction of a millisecond under load. (Growth is seen
// at once in PerCPU mode: a P id beyond the table triggers a resize.)
const pollEvery = 1024

// NewPool builds a pool. With cfg.Prealloc it allocates the streams now and
// fails if the backend cannot build a context with cfg.Params.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Backend == nil {
		return nil, errors.New("streams: new pool: no backend")
	}
	if cfg.Mode != PerCPU && cfg.Mode != Pooled {
		return nil, fmt.Errorf("streams: new pool: invalid mode %d", int(cfg.Mode))
	}
	if cfg.Max < 0 {
		return nil, fmt.Errorf("streams: new pool: negative stream count %d", cfg.Max)
	}
	p := &Pool{
		backend:   cfg.Backend,
		params:    cfg.Params,
		mode:      cfg.Mode,
		prealloc:  cfg.Prealloc,
		onRelease: cfg.OnRelease,
	}
	p.maxCfg.Store(int64(cfg.Max))
	p.ref.init(p.release)
	p.pl.cond.L = &p.pl.mu
	if err := p.resizeLocked(true); err != nil {
		p.closeAll()
		return nil, fmt.Errorf("streams: new %s pool: %w", p.Algorithm(), err)
	}
	return p, nil
}

// Algorithm is the zram name of the pool's backend.
func (p *Pool) Algorithm() string { return p.backend.Name() }

// Mode is the pool's stream mode.
func (p *Pool) Mode() Mode { return p.mode }

// Get returns a stream that no other caller holds, blocking while none is
// free. The caller must Put it back and must hold a reference on p meanwhile.
func (p *Pool) Get() (*Stream, error) {
	if p.mode == PerCPU {
		return p.getPerCPU()
	}
	return p.getPooled()
}

// Put returns a stream obtained from Get. Putting a stream twice panics.
func (p *Pool) Put(s *Stream) {
	if s.pool != p {
		panic("streams: Put of a stream from another pool")
	}
	if !s.owner.CompareAndSwap(ownHeld, ownFree) {
		if !s.owner.CompareAndSwap(ownHeld|ownDead, ownDead) {
			panic("streams: Put of a stream that is not held")
		}
		// The pool was destroyed while s was held (a Get without a
		// reference): destroy left the stream to us, its last user.
		p.closeStream(s)
		if s.slot != nil {
			s.slot.mu.Unlock()
		}
		return
	}
	if s.slot != nil {
		s.slot.mu.Unlock()
		return
	}
	p.putPooled(s)
}

// SetMax changes the number of streams (Pooled) or CPU slots (PerCPU) at
// runtime; n <= 0 follows GOMAXPROCS again. Streams of slots that go offline
// are kept until the pool is destroyed; surplus Pooled streams are freed as
// they are put back.
func (p *Pool) SetMax(n int) {
	if n < 0 {
		n = 0
	}
	p.maxCfg.Store(int64(n))
	p.resize()
}

// Ref takes a reference on the pool. The caller must already hold one (or
// know the pool is not killed): Ref on a released pool panics.
func (p *Pool) Ref() { p.ref.get() }

// TryRef takes a reference unless the pool has already been released
// (percpu_ref_tryget): the way to pin a pool found through a shared pointer
// that may be switched and killed concurrently.
func (p *Pool) TryRef() bool { return p.ref.tryGet() }

// Unref drops a reference; the last one after Kill destroys the pool.
func (p *Pool) Unref() { p.ref.put() }

// Kill drops the creator's reference (percpu_ref_kill). From then on the pool
// is destroyed, and OnRelease called, when the count reaches zero. Only the
// first call has an effect.
func (p *Pool) Kill() { p.ref.kill() }

// newStream builds a stream for sl (nil in Pooled mode).
func (p *Pool) newStream(sl *slot) (*Stream, error) {
	ctx, err := p.backend.NewContext(p.params)
	if err != nil {
		return nil, fmt.Errorf("streams: %s context: %w", p.backend.Name(), err)
	}
	p.allocated.Add(1)
	p.created.Add(1)
	return &Stream{Ctx: ctx, Buf: make([]byte, 2*zcomp.PageSize), pool: p, slot: sl}, nil
}

func (p *Pool) closeStream(s *Stream) {
	s.Ctx.Close()
	p.allocated.Add(-1)
	p.freed.Add(1)
}

// resize re-reads GOMAXPROCS and the configured maximum and applies them.
func (p *Pool) resize() {
	_ = p.resizeLocked(false)
}

// resizeLocked applies GOMAXPROCS and maxCfg. Stream allocation failures are
// reported only at creation: later, a slot without a stream gets one lazily.
func (p *Pool) resizeLocked(initial bool) error {
	p.resizeMu.Lock()
	defer p.resizeMu.Unlock()
	if p.dead.Load() {
		return nil
	}
	procs := runtime.GOMAXPROCS(0)
	p.procs.Store(int64(procs))
	limit := int(p.maxCfg.Load())
	if limit <= 0 {
		limit = procs
	}
	if p.mode == PerCPU {
		return p.resizePerCPU(procs, limit)
	}
	return p.pl.setLimit(p, limit, initial && p.prealloc)
}

// poll resizes if GOMAXPROCS changed since the last resize (the runtime
// changes it when the cgroup CPU limit changes).
func (p *Pool) poll() {
	if int64(runtime.GOMAXPROCS(0)) != p.procs.Load() {
		p.resize()
	}
}

// release runs once, when the count reaches zero after Kill.
func (p *Pool) release() {
	p.closeAll()
	if p.onRelease != nil {
		p.onRelease()
	}
}

// closeAll destroys the pool's streams. A stream still held (by a caller
// without a reference) is marked dead and closed by its Put instead.
func (p *Pool) closeAll() {
	p.resizeMu.Lock()
	p.dead.Store(true)
	t := p.table.Load()
	p.resizeMu.Unlock()
	if t != nil {
		// Slot streams are written only under resizeMu (or before the
		// table is published), so reading them after taking it is safe.
		for _, sl := range t.slots {
			p.killStream(sl.stream)
		}
	}
	for _, s := range p.pl.kill() {
		p.killStream(s)
	}
}

func (p *Pool) killStream(s *Stream) {
	if s != nil && s.owner.Or(ownDead) == ownFree {
		p.closeStream(s)
	}
}

// PoolStats is a snapshot of a pool's counters.
type PoolStats struct {
	Algorithm string
	Mode      Mode
	Max       int    // stream limit in force: SetMax's n, or GOMAXPROCS
	Online    int    // PerCPU: online CPU slots; Pooled: Max
	Allocated int    // streams allocated now (PerCPU: includes offline slots' kept streams)
	Idle      int    // Pooled: streams on the idle list
	Gets      uint64 // successful Gets
	Waits     uint64 // Gets that blocked because their stream (PerCPU) or every stream (Pooled) was busy
	Retries   uint64 // PerCPU: Gets that locked a slot that had gone offline, and retried
	Fallbacks uint64 // PerCPU: Gets that ran out of retries and blocked on slot 0
	Created   uint64 // streams created
	Freed     uint64 // streams freed (Pooled surplus, destroy)
	Refs      int64  // references held (approximate while they change)
	Killed    bool
	Destroyed bool
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool) Stats() PoolStats {
	st := PoolStats{
		Algorithm: p.Algorithm(),
		Mode:      p.mode,
		Allocated: int(p.allocated.Load()),
		Fallbacks: p.fallbacks.Load(),
		Created:   p.created.Load(),
		Freed:     p.freed.Load(),
		Refs:      p.ref.count(),
		Killed:    p.ref.killed.Load(),
		Destroyed: p.dead.Load(),
	}
	if p.mode == PerCPU {
		if t := p.table.Load(); t != nil {
			st.Online = t.online
			st.Max = t.limit
			for _, sl := range t.slots {
				st.Gets += sl.gets.Load()
				st.Waits += sl.waits.Load()
				st.Retries += sl.retries.Load()
			}
		}
		return st
	}
	p.pl.mu.Lock()
	st.Max, st.Online, st.Idle = p.pl.limit, p.pl.limit, len(p.pl.idle)
	st.Gets, st.Waits = p.pl.gets, p.pl.waits
	p.pl.mu.Unlock()
	return st
}
