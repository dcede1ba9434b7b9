package pagestore

// The reserve: store memory faulted in ahead of need, so Put never takes a
// page fault (see "Reserve" in doc.go).

import (
	"errors"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/hostmem"
)

// ErrNoMem means storing the object needs a new span and the reserve of
// pre-faulted span memory stayed empty for Options.ReserveWait: the refiller
// could not fault memory in fast enough (the system is short of memory, or a
// burst outran it). Nothing stored changes; a later Put may succeed.
var ErrNoMem = errors.New("pagestore: no pre-faulted memory for a new span")

// errRefill is internal: what Put needs (a reserve span, a spare span struct,
// room in the span table, a faulted handle chunk) is not ready yet.
var errRefill = errors.New("pagestore: reserve empty")

const (
	// DefaultReserveWait is how long a Put that finds the reserve empty waits
	// for the refiller to make any progress before failing with ErrNoMem. A
	// refiller faulting pages in delivers a run every fraction of a
	// millisecond; one that delivers nothing for this long is stuck in
	// reclaim (the system is out of memory), and then a refused write, which
	// the kernel retries later, is better than a server that faults and
	// hangs. It is not a few milliseconds because the refiller is one
	// goroutine among the server's compressing ones on a possibly busy
	// machine: on 2 shared cores a full-speed fio saw it unscheduled for over
	// 20 ms, and those writes must not fail.
	DefaultReserveWait = 100 * time.Millisecond

	// reserveBaseBytes is each pool's high watermark to start with; low is
	// half of high. 11 span lengths are in use (6..16 pages), so the reserve
	// starts at about 2.75 MiB: under swap the kernel writes a few MiB/s
	// (8 MiB/s measured in the guest), i.e. 2-4 MiB/s of store spread over
	// several pools, so a pool's 128-256 KiB lasts tens of milliseconds
	// while the refiller is blocked in reclaim, and every write served from
	// it frees a 4 KiB page for the refiller's next fault.
	reserveBaseBytes = 256 << 10
	// reservePoolMax caps one pool's high watermark: a pool that runs dry
	// (a sustained fast stream of one compressibility, as fio writes) has
	// its watermarks doubled up to this.
	reservePoolMax = 2 << 20
	// reserveTotalMax caps the sum of the high watermarks: boosting stops
	// there, so the reserve never holds more than this (plus what the base
	// watermarks add), whatever the workload.
	reserveTotalMax = 8 << 20
	// reserveDecay is how long a pool whose watermarks a burst boosted must
	// go without handing out a span before they drop back to base and the
	// excess reserve goes back to the OS (the pool is idle: its next burst
	// boosts it again). A store that empties drops them at once.
	reserveDecay = 30 * time.Second
	// reservePoll is how often a waiting Put looks again.
	reservePoll = 100 * time.Microsecond
	// reserveWaitCap bounds a Put's wait, in ReserveWaits, even while the
	// refiller makes progress (but others take all it adds) or waits for a
	// CPU: long enough for any scheduling delay, short of the kernel's
	// 30 s NBD request timeout.
	reserveWaitCap = 100
	// classHeadroom is how many span structs (and span-table entries) each
	// class keeps ready so newSpan allocates nothing on the Go heap.
	classHeadroom = 2
)

// havePopulate is cleared when the kernel lacks MADV_POPULATE_WRITE (Linux
// before 5.14); populate then touches each page.
var havePopulate atomic.Bool

func init() { havePopulate.Store(true) }

// populate faults in (and, under mlockall MCL_ONFAULT, locks) n bytes at p
// for writing: one madvise for the whole range, or a write to every page.
// The range's contents are kept. It may block in reclaim: only the
// refiller and New call it, never the write path.
func populate(p unsafe.Pointer, n uintptr) {
	if havePopulate.Load() {
		for {
			err := unix.Madvise(unsafe.Slice((*byte)(p), n), unix.MADV_POPULATE_WRITE)
			if err == nil {
				return
			}
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			if err == unix.EINVAL {
				havePopulate.Store(false)
			}
			// ENOMEM and the like: touching waits in reclaim instead.
			break
		}
	}
	for off := uintptr(0); off < n; off += PageSize {
		// An atomic add of 0 is a write fault that keeps the contents.
		atomic.AddUint32((*uint32)(unsafe.Add(p, off)), 0)
	}
}

// populateChunk bounds one populate call of the refiller. A waiting Put
// calls the refiller stuck when it reports no progress for ReserveWait, so a
// long run (a boosted pool refills up to 2 MiB) is faulted in a piece at a
// time with progress after each: on a slow machine (a TCG guest restoring a
// state file) one 2 MiB madvise took longer than ReserveWait and the Put
// failed although the refiller was doing fine.
const populateChunk = 64 << 10

// populateHook is populate; tests slow it down.
var populateHook = populate

// populate is the refiller's populate, marked so waiting Puts can tell a
// refiller stuck in the kernel's reclaim (out of memory: fail fast) from one
// that is merely not running yet (a busy CPU: keep waiting) or slow.
func (s *Store) populate(p unsafe.Pointer, n uintptr) {
	for off := uintptr(0); off < n; off += populateChunk {
		s.populating.Store(time.Now().UnixNano())
		populateHook(unsafe.Add(p, off), min(populateChunk, n-off))
		s.refilled.Add(1) // progress, for awaitRefill
	}
	s.populating.Store(0)
}

// resSlot is one reserved span: its arena and slot, pages faulted in.
type resSlot struct {
	a    *arena
	slot uint32
}

// initReserve sets the pool's watermarks and sizes its reserve so pushes
// never grow the slice (release pushes from Free and compaction).
func (p *spanPool) initReserve() {
	p.reserve = true
	p.high = max(4, int(reserveBaseBytes/p.spanBytes))
	p.low = p.high / 2
	p.baseHigh = p.high
	p.res = make([]resSlot, 0, 2*(reservePoolMax/int(p.spanBytes)+4))
}

// take pops a reserved span. low reports that the reserve is now below its
// low watermark and the refiller should run.
func (p *spanPool) take() (base unsafe.Pointer, a *arena, slot uint32, ok, low bool) {
	p.mu.Lock()
	n := len(p.res)
	if n == 0 {
		p.mu.Unlock()
		p.dry.Store(true)
		return nil, nil, 0, false, true
	}
	r := p.res[n-1]
	p.res = p.res[:n-1]
	p.taken++
	low = n-1 < p.low
	p.mu.Unlock()
	return unsafe.Add(r.a.base, uintptr(r.slot)*p.spanBytes), r.a, r.slot, true, low
}

// untake puts back a span take returned (its charge failed).
func (p *spanPool) untake(a *arena, slot uint32) {
	p.mu.Lock()
	p.res = append(p.res, resSlot{a, slot})
	p.mu.Unlock()
}

// keep puts a span being released into the reserve instead of discarding
// it, when the reserve is below its high watermark: its pages are already
// faulted in and locked, so Free and compaction refill the reserve for free
// and the refiller does not fault in pages while they are being given back.
func (p *spanPool) keep(a *arena, slot uint32) bool {
	if !p.reserve {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.res) >= p.high {
		return false
	}
	p.res = append(p.res, resSlot{a, slot})
	return true
}

// grabRun marks up to need spans as used and returns them for populating:
// one discarded slot, or a run of fresh slots of one arena (one madvise for
// all of them), mapping a new arena if none has room. Called with p.mu held.
func (p *spanPool) grabRun(need int) (*arena, uint32, int, error) {
	for a := p.avail; a != nil; a = a.next {
		if n := len(a.free); n > 0 {
			slot := a.free[n-1]
			a.free = a.free[:n-1]
			a.used++
			p.unlinkIfFull(a)
			return a, slot, 1, nil
		}
	}
	a := p.avail
	for a != nil && a.fresh == p.perArena {
		a = a.next
	}
	if a == nil {
		base, err := mapAnon(uintptr(p.perArena) * p.spanBytes)
		if err != nil {
			return nil, 0, 0, err
		}
		a = &arena{base: base, free: make([]uint32, 0, p.perArena)}
		p.arenas[a] = struct{}{}
		p.link(a)
	}
	k := min(uint32(need), p.perArena-a.fresh)
	first := a.fresh
	a.fresh += k
	a.used += k
	p.unlinkIfFull(a)
	return a, first, int(k), nil
}

func (p *spanPool) unlinkIfFull(a *arena) {
	if len(a.free) == 0 && a.fresh == p.perArena && a.listed {
		p.unlink(a)
	}
}

// refill faults spans in until the reserve holds target. It runs in the
// refiller only; the faults happen outside p.mu so Put and Free go on.
func (p *spanPool) refill(s *Store, target int) error {
	for {
		p.mu.Lock()
		need := target - len(p.res)
		if need <= 0 {
			p.mu.Unlock()
			return nil
		}
		a, first, k, err := p.grabRun(need)
		p.mu.Unlock()
		if err != nil {
			return err
		}
		s.populate(unsafe.Add(a.base, uintptr(first)*p.spanBytes), uintptr(k)*p.spanBytes)
		p.mu.Lock()
		for i := 0; i < k; i++ {
			p.res = append(p.res, resSlot{a, first + uint32(i)})
		}
		p.mu.Unlock()
		s.refilled.Add(1)
	}
}

// reserveBytes is the span memory held in the reserve.
func (p *spanPool) reserveBytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return int64(len(p.res)) * int64(p.spanBytes)
}

// prepare keeps classHeadroom span structs and span-table entries ready, so
// newSpan never allocates: the allocations happen here, outside c.mu.
func (c *class) prepare() {
	c.mu.Lock()
	spares := cap(c.spare) - len(c.spare)
	curCap := cap(c.spans)
	grow := curCap-len(c.spans) < classHeadroom
	c.mu.Unlock()
	if spares == 0 && !grow {
		return
	}
	fresh := make([]*span, spares)
	for i := range fresh {
		fresh[i] = &span{rev: make([]uint32, c.objs)}
	}
	var spans []*span
	var ids []uint32
	if grow {
		n := max(2*curCap, 16)
		spans, ids = make([]*span, 0, n), make([]uint32, 0, n)
	}
	c.mu.Lock()
	for _, sp := range fresh {
		if len(c.spare) < cap(c.spare) {
			c.spare = append(c.spare, sp)
		}
	}
	if grow && cap(c.spans) == curCap {
		c.spans = append(spans, c.spans...)
		c.freeIDs = append(ids, c.freeIDs...)
	}
	c.mu.Unlock()
}

// ready reports whether newSpan can run without allocating. Called with c.mu
// held, in reserve mode.
func (c *class) ready() bool {
	return len(c.spare) > 0 && (len(c.freeIDs) > 0 || len(c.spans) < cap(c.spans))
}

// kickRefill wakes the refiller without ever blocking the caller.
func (s *Store) kickRefill() {
	select {
	case s.refillWake <- struct{}{}:
	default:
	}
}

// refillWait is one Put's wait for the refiller.
type refillWait struct {
	stall    time.Time // fail once the refiller has made no progress until then
	cap      time.Time // and in any case then
	progress int64     // s.refilled when last seen
}

// awaitRefill is Put's wait for the refiller: it wakes it and sleeps one
// poll interval, reporting false once the refiller has made no progress for
// ReserveWait while stuck inside populate with the system short of free
// memory (in the kernel's reclaim: out of memory), or the wait has lasted
// reserveWaitCap. A refiller that is not populating is only waiting for a
// CPU, and one inside populate while memory is plentiful was only
// descheduled there (a loaded host stalls a TCG guest's vCPU for longer than
// ReserveWait): that is a busy machine, not an out-of-memory one, and the
// Put keeps waiting. While the
// refiller delivers, other Puts may take what it adds first, and this one
// keeps waiting its turn: a burst on a busy machine must not see failures a
// swap storm would.
func (s *Store) awaitRefill(w *refillWait) bool {
	now := time.Now()
	p := s.refilled.Load()
	stuck := s.populating.Load() != 0
	switch {
	case w.cap.IsZero():
		w.cap = now.Add(reserveWaitCap * s.reserveWait)
		s.reserveWaits.Add(1)
		fallthrough
	case p != w.progress || !stuck || !memoryShort(s):
		w.stall, w.progress = now.Add(s.reserveWait), p
	case now.After(w.stall):
		return false
	}
	if now.After(w.cap) {
		return false
	}
	s.kickRefill()
	time.Sleep(reservePoll)
	return true
}

// MemoryShort reports whether the system's free memory is low enough that
// the kernel reclaims (below four times vm.min_free_kbytes): a Put that
// must wait for the refiller then waits on reclaim, maybe on writes only
// its caller can complete.
func (s *Store) MemoryShort() bool { return memoryShort(s) }

// memoryShort reports whether the system's free memory is below
// s.shortFree, as it is while the kernel reclaims. sysinfo(2) neither
// allocates nor faults, so the waiting write path may call it. If it fails,
// memory counts as short: the Put then fails as it would without the check.
// A variable for tests.
var memoryShort = memoryShortSysinfo

func memoryShortSysinfo(s *Store) bool {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return true
	}
	return uint64(si.Freeram)*uint64(si.Unit) < s.shortFree
}

// shortFreeBytes is the free memory below which memoryShort says short: four
// times vm.min_free_kbytes (the kernel reclaims below its low and high
// watermarks, a little above min), or 64 MiB where that cannot be read.
func shortFreeBytes() uint64 {
	if kb, err := hostmem.MinFreeKiB(); err == nil && kb > 0 {
		return 4 * kb << 10
	}
	return 64 << 20
}

// refillLoop is the refiller: it runs whenever a Put takes the reserve
// below a low watermark or finds something not ready, and gives back what
// bursts added to the reserve once the store empties or a pool idles.
func (s *Store) refillLoop() {
	defer close(s.refillDone)
	decay := time.NewTicker(reserveDecay)
	defer decay.Stop()
	for {
		idle := false
		select {
		case <-s.refillStop:
			return
		case <-s.refillWake:
		case <-decay.C:
			idle = true
		}
		if s.refillHeld.Load() {
			continue
		}
		if s.emptied.Swap(false) && s.memUsed.Load() == 0 {
			s.shrinkReserve(true)
		} else if idle {
			s.shrinkReserve(false)
		}
		s.refillAll(false)
	}
}

// shrinkReserve gives back what bursts added: pools' boosted watermarks go
// back to base and reserved spans beyond it are discarded. With empty (the
// store holds nothing) every pool shrinks, and classes drop their span
// tables grown for the spans they held; otherwise only pools that handed out
// no span since the last call (a decay tick ago) do. It runs in the refiller
// (or a test), outside the write path: Put only ever finds a smaller, still
// faulted-in reserve, and a burst boosts it again.
func (s *Store) shrinkReserve(empty bool) {
	s.refillMu.Lock()
	defer s.refillMu.Unlock()
	for _, p := range s.pools {
		if p == nil {
			continue
		}
		p.mu.Lock()
		idle := p.taken == p.takenSeen
		p.takenSeen = p.taken
		p.mu.Unlock()
		if empty || idle {
			s.highTotal.Add(-p.shrink())
		}
	}
	if empty {
		for i := range s.classes {
			s.classes[i].shrinkTable()
		}
	}
}

// shrink puts p's watermarks back to base and discards reserved spans past
// the base high watermark. It returns the bytes the high watermark dropped.
func (p *spanPool) shrink() (highDrop int64) {
	p.mu.Lock()
	if p.high > p.baseHigh {
		highDrop = int64(p.high-p.baseHigh) * int64(p.spanBytes)
		p.high, p.low = p.baseHigh, p.baseHigh/2
	}
	p.mu.Unlock()
	for {
		// One span at a time: the discard is a syscall, kept outside p.mu.
		p.mu.Lock()
		n := len(p.res)
		if n <= p.high {
			p.mu.Unlock()
			return highDrop
		}
		r := p.res[n-1]
		p.res = p.res[:n-1]
		p.mu.Unlock()
		p.drop(r.a, r.slot)
	}
}

// shrinkTable replaces an empty class's span table, grown to its peak span
// count (12 bytes a span on the Go heap), with one of the size prepare
// starts from, so the garbage collector can take the old one.
func (c *class) shrinkTable() {
	const small = 16 // prepare's first size: room for classHeadroom and more
	c.mu.Lock()
	shrink := c.nspans == 0 && cap(c.spans) > small
	c.mu.Unlock()
	if !shrink {
		return
	}
	spans, ids := make([]*span, 0, small), make([]uint32, 0, small)
	c.mu.Lock()
	if c.nspans == 0 { // no span ids are in use: none needs keeping
		c.spans, c.freeIDs = spans, ids
	}
	c.mu.Unlock()
}

// refillAll tops up everything Put may need: the handle table's next chunk,
// spare span structs of the classes that asked (all with full), and each
// pool's reserve: pools below their low watermark (all with full) to their
// high one, pools a Put found empty first.
func (s *Store) refillAll(full bool) {
	s.refillMu.Lock() // tests call it beside the refiller
	defer s.refillMu.Unlock()
	s.handles.prepare(s)
	for i := range s.classes {
		if c := &s.classes[i]; c.needPrep.Swap(false) || full {
			c.prepare()
			s.refilled.Add(1)
		}
	}
	for pass := 0; pass < 2; pass++ {
		for _, p := range s.pools {
			if p != nil {
				s.refillPool(p, pass == 0, full)
			}
		}
	}
}

// refillPool fills p to its high watermark if it is below its low one (or
// full is set). The urgent pass only serves pools that a Put found empty.
func (s *Store) refillPool(p *spanPool, urgent, full bool) {
	p.mu.Lock()
	dry := p.dry.Load() || len(p.res) == 0
	if urgent != dry {
		p.mu.Unlock()
		return
	}
	if p.dry.Swap(false) && s.highTotal.Load()+int64(p.high)*int64(p.spanBytes) <= reserveTotalMax {
		// A Put found this pool empty: the stream outran the watermarks.
		if nh := min(2*p.high, int(reservePoolMax/p.spanBytes)); nh > p.high {
			s.highTotal.Add(int64(nh-p.high) * int64(p.spanBytes))
			p.high, p.low = nh, nh/2
		}
	}
	n, low, high := len(p.res), p.low, p.high
	p.mu.Unlock()
	if n >= low && !full && !dry {
		return
	}
	target := high
	if lim := s.limit.Load(); lim > 0 {
		// Reserve no more than a new span could use under the limit;
		// SetLimit wakes the refiller when the limit moves.
		head := max(lim-s.memUsed.Load(), 0)
		target = min(target, int((head+int64(p.spanBytes)-1)/int64(p.spanBytes)))
	}
	// A failure (mmap refused) leaves the pool short; the next Put that
	// needs it waits and, if the refiller still cannot help, fails.
	_ = p.refill(s, target)
}

// prepare faults in the handle table's chunks ahead of the next id: the
// current one and the one after it, so Put never touches an unfaulted entry.
// Only the refiller (and New) call it.
func (t *handleTable) prepare(s *Store) {
	for {
		t.mu.Lock()
		want := min(t.next>>hChunkShift+2, hDirLen)
		ci, gen := t.ready, t.gen
		if ci >= want {
			t.mu.Unlock()
			return
		}
		c := t.dir[ci].Load()
		t.mu.Unlock()
		var p unsafe.Pointer
		if c == nil {
			var err error
			if p, err = mapAnon(hChunkBytes); err != nil {
				return // the next Put past the ready chunks waits, then fails
			}
		} else {
			p = unsafe.Pointer(c)
		}
		s.populate(p, hChunkBytes)
		t.mu.Lock()
		if c == nil {
			t.dir[ci].Store((*hchunk)(p)) // only the refiller maps chunks in reserve mode
			t.chunks.Add(1)
		}
		if t.ready == ci && t.gen == gen {
			t.ready++
		}
		t.mu.Unlock()
		s.refilled.Add(1)
	}
}

// startReserve sets up reserve mode and fills everything once before New
// returns, so the first writes find the reserve full.
func (s *Store) startReserve() {
	s.handles.prefault = true
	s.shortFree = shortFreeBytes() // read now: never from the write path
	for i := range s.classes {
		s.classes[i].spare = make([]*span, 0, maxSpare)
	}
	for _, p := range s.pools {
		if p != nil {
			p.initReserve()
			s.highTotal.Add(int64(p.high) * int64(p.spanBytes))
		}
	}
	s.refillAll(true)
	s.refillWake = make(chan struct{}, 1)
	s.refillStop = make(chan struct{})
	s.refillDone = make(chan struct{})
	go s.refillLoop()
}

// refillErr turns the wait's internal error into ErrNoMem and counts it.
func (s *Store) refillErr(err error) error {
	if err == errRefill {
		s.noMem.Add(1)
		return ErrNoMem
	}
	return err
}
