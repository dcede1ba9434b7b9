package pagestore

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Handle names one stored object. It stays valid, and keeps its value, until
// Free, whatever compaction does. 0 is never a valid handle, so a zero slot
// means "nothing stored". Read, Size and Free of a freed or never
// issued handle panic with a message instead of touching another object
// (best effort: an id reissued to a new object cannot be told apart).
type Handle uint64

var (
	// ErrLimit means storing the object needs a new span and that span would
	// take MemUsed over the limit. Nothing stored changes.
	ErrLimit = errors.New("pagestore: memory limit reached")
	// ErrSize means the object is empty or larger than MaxObjectSize.
	ErrSize = errors.New("pagestore: object size out of range")
	// ErrClosed means the store has been closed.
	ErrClosed = errors.New("pagestore: store closed")
)

// Options configure a Store.
type Options struct {
	// Limit caps MemUsed in bytes; 0 means no limit. SetLimit changes it later.
	Limit int64
	// AutoCompact runs compaction in a background goroutine whenever the span
	// memory it could give back reaches CompactRatio of MemUsed and at least
	// CompactMinBytes.
	AutoCompact bool
	// CompactRatio is the fraction of MemUsed that must be reclaimable before
	// auto compaction runs; 0 means DefaultCompactRatio.
	CompactRatio float64
	// CompactMinBytes is the least reclaimable memory worth an auto
	// compaction; 0 means DefaultCompactMinBytes.
	CompactMinBytes int64
	// Reserve makes Put take new span memory only from a reserve faulted in
	// ahead of time by a background refiller, and fail with ErrNoMem rather
	// than fault when the reserve stays empty for ReserveWait: what a swap
	// device needs (see "Reserve" in the package doc).
	Reserve bool
	// ReserveWait bounds a Put's wait for the refiller; 0 means
	// DefaultReserveWait.
	ReserveWait time.Duration
}

const (
	// DefaultCompactRatio: the store's budget is 5% over the compressed data;
	// fragmentation may take about half of it before compaction moves objects.
	DefaultCompactRatio = 0.025
	// DefaultCompactMinBytes keeps small stores from compacting for a few spans.
	DefaultCompactMinBytes = 1 << 20
)

const (
	nGroups  = 8            // fullness groups of partial spans; group nGroups holds full spans
	slotFree = 1 << 31      // rev[i] tag: slot i is free; the low bits link to the next free slot
	slotEnd  = slotFree - 1 // end of a span's free-slot list
)

// span is one contiguous run of pages holding objs slots of one class. Its
// bookkeeping lives on the Go heap, its objects do not.
type span struct {
	base       unsafe.Pointer // start of the span's memory (an mmap'd arena)
	rev        []uint32       // per slot: owning handle id, or slotFree|next free slot
	prev, next *span          // in the class's fullness-group list
	ar         *arena
	arSlot     uint32
	id         uint32 // index in class.spans, stored in handle entries
	inuse      uint32
	fresh      uint32 // slots [fresh, objs) have never been used
	freeHead   uint32 // first slot of the free list, or slotEnd
	group      uint8
}

// class holds every span of one size class. Its lock guards its spans, their
// slots and the handle entries of its objects: Put, Free and compaction take
// it exclusively, Read shared, so a reader never sees an object move under it.
type class struct {
	mu        sync.RWMutex
	size      uint32
	objs      uint32
	pages     uint32
	spanBytes int64
	pool      *spanPool

	groups   [nGroups + 1]*span // list heads by fullness
	spans    []*span            // by span id; nil for unused ids
	freeIDs  []uint32
	spare    []*span     // span structs kept for reuse (their rev slices are the big part)
	needPrep atomic.Bool // reserve mode: newSpan wants the refiller to prepare this class

	nspans   int64
	objects  int64
	objBytes int64
	freeable int64 // spans compaction could free now: (nspans*objs - objects) / objs

	_ [64]byte // keep neighbouring classes' locks off one cache line
}

// Store is a compressed page store. All methods are safe for concurrent use,
// with one rule from the caller: operations on the same handle are not
// concurrent with its Free (the block device serialises per page).
type Store struct {
	classes []class
	bySize  [MaxObjectSize/classStep + 1]uint8
	pools   [maxSpanPages + 1]*spanPool
	handles handleTable

	memUsed        atomic.Int64
	memUsedMax     atomic.Int64
	limit          atomic.Int64
	pagesCompacted atomic.Int64
	freeable       atomic.Int64 // bytes compaction could give back now
	longestStep    atomic.Int64 // ns: longest a compaction step held a class lock

	auto      bool
	ratio     float64
	minBytes  int64
	compactMu sync.Mutex // one compaction at a time
	wake      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closed    atomic.Bool
	closeOnce sync.Once
	autoRuns  atomic.Int64

	stepHook func(time.Duration) // tests: sees every compaction step's lock hold

	// Reserve mode (reserve.go).
	reserve      bool
	reserveWait  time.Duration
	shortFree    uint64 // free memory below which a refiller delivering nothing is stuck in reclaim
	refillWake   chan struct{}
	refillStop   chan struct{}
	refillDone   chan struct{}
	refillMu     sync.Mutex                           // one refillAll at a time
	refillHeld   atomic.Bool                          // tests: the refiller ignores wake-ups
	highTotal    atomic.Int64                         // sum of the pools' high watermarks, bytes
	reserveWaits atomic.Int64                         // Puts that found something not ready and waited
	refilled     atomic.Int64                         // refiller progress: runs of spans, chunks, classes made ready
	populating   atomic.Int64                         // when the refiller entered populate (unix ns), 0 outside
	noMem        atomic.Int64                         // Puts failed with ErrNoMem
	emptied      atomic.Bool                          // MemUsed reached 0: the refiller shrinks the reserve
	takeHook     func(base unsafe.Pointer, n uintptr) // tests: sees every span taken from the reserve
}

// New builds an empty store. It maps no memory until the first Put.
func New(opts Options) (*Store, error) {
	if opts.Limit < 0 {
		return nil, fmt.Errorf("pagestore: negative limit %d", opts.Limit)
	}
	if opts.CompactRatio < 0 || opts.CompactRatio > 1 {
		return nil, fmt.Errorf("pagestore: compact ratio %v outside 0..1", opts.CompactRatio)
	}
	if opts.CompactMinBytes < 0 {
		return nil, fmt.Errorf("pagestore: negative compact minimum %d", opts.CompactMinBytes)
	}
	if opts.ReserveWait < 0 {
		return nil, fmt.Errorf("pagestore: negative reserve wait %v", opts.ReserveWait)
	}
	s := &Store{auto: opts.AutoCompact, ratio: opts.CompactRatio, minBytes: opts.CompactMinBytes,
		reserve: opts.Reserve, reserveWait: opts.ReserveWait}
	if s.reserveWait == 0 {
		s.reserveWait = DefaultReserveWait
	}
	if s.ratio == 0 {
		s.ratio = DefaultCompactRatio
	}
	if s.minBytes == 0 {
		s.minBytes = DefaultCompactMinBytes
	}
	s.limit.Store(opts.Limit)
	s.handles.init()
	infos, bySize := buildClasses()
	s.bySize = bySize
	s.classes = make([]class, len(infos))
	for i, ci := range infos {
		if s.pools[ci.pages] == nil {
			s.pools[ci.pages] = newSpanPool(ci.pages)
		}
		c := &s.classes[i]
		c.size, c.objs, c.pages = ci.size, ci.objs, ci.pages
		c.spanBytes = int64(ci.pages) * PageSize
		c.pool = s.pools[ci.pages]
	}
	if s.reserve {
		s.startReserve()
	}
	if s.auto {
		s.wake = make(chan struct{}, 1)
		s.stop = make(chan struct{})
		s.done = make(chan struct{})
		go s.autoLoop()
	}
	return s, nil
}

func (s *Store) classFor(n int) *class { return &s.classes[s.bySize[sizeIndex(n)]] }

// ClassSize returns the bytes of span memory a slot for an n-byte object
// takes (its size class), or 0 if n is out of range. Recompression uses it:
// a smaller encoding only saves memory if it lands in a smaller class.
func (s *Store) ClassSize(n int) int {
	if n < 1 || n > MaxObjectSize {
		return 0
	}
	return int(s.classFor(n).size)
}

func (s *Store) slotMem(c *class, sp *span, slot uint32, n int) []byte {
	return unsafe.Slice((*byte)(unsafe.Add(sp.base, uintptr(slot)*uintptr(c.size))), n)
}

// Put copies data (1..MaxObjectSize bytes) into the store and returns its
// handle. It fails with ErrLimit only when no span of the object's class has
// a free slot and a new span would take MemUsed over the limit.
func (s *Store) Put(data []byte) (Handle, error) { return s.put(data, true) }

// put is Put; without wait it fails with ErrWouldWait where Put would wait
// for the refiller (TryPut).
func (s *Store) put(data []byte, wait bool) (Handle, error) {
	n := len(data)
	if n < 1 || n > MaxObjectSize {
		return 0, fmt.Errorf("pagestore: put of %d bytes: %w", n, ErrSize)
	}
	if s.closed.Load() {
		return 0, ErrClosed
	}
	var w refillWait // the wait for the refiller, once one starts
	id, kick, err := s.handles.alloc()
	for err == errRefill && wait && s.awaitRefill(&w) {
		id, kick, err = s.handles.alloc()
	}
	if kick {
		s.kickRefill()
	}
	if err != nil {
		return 0, s.putErr(err, wait)
	}
	c := s.classFor(n)
	c.mu.Lock()
	sp := c.pickSpan()
	for sp == nil {
		if sp, err = s.newSpan(c); err == nil {
			break
		}
		// Wait without the class lock: Reads and Frees of the class go on.
		c.mu.Unlock()
		if err != errRefill || !wait || !s.awaitRefill(&w) {
			s.handles.free(id)
			return 0, s.putErr(err, wait)
		}
		c.mu.Lock()
		sp = c.pickSpan() // another Put may have opened a span meanwhile
	}
	slot := sp.allocSlot(id)
	copy(s.slotMem(c, sp, slot, n), data)
	s.handles.entry(uint64(id)).Store(entEncode(sp.id, slot, n))
	c.objects++
	c.objBytes += int64(n)
	c.regroup(sp)
	s.updateFreeable(c)
	c.mu.Unlock()
	return Handle(id), nil
}

// Read copies the object into dst and returns its length. dst should have
// room for Size(h) bytes; if it is shorter, only len(dst) bytes are copied.
func (s *Store) Read(h Handle, dst []byte) int {
	e, v := s.handles.liveEntry(h)
	n := entSize(v)
	c := s.classFor(n)
	c.mu.RLock()
	v = e.Load() // compaction may have moved it before we got the lock
	copy(dst, s.slotMem(c, c.spans[entSpan(v)], entSlot(v), n))
	c.mu.RUnlock()
	return n
}

// Size returns the object's length in bytes. It takes no lock: the size is
// part of the handle's entry and compaction never changes it.
func (s *Store) Size(h Handle) int {
	_, v := s.handles.liveEntry(h)
	return entSize(v)
}

// Free releases the object. A span left empty goes back to the OS at once.
func (s *Store) Free(h Handle) {
	e, v := s.handles.liveEntry(h)
	n := entSize(v)
	c := s.classFor(n)
	c.mu.Lock()
	v = e.Load()
	sp := c.spans[entSpan(v)]
	sp.freeSlot(entSlot(v))
	c.objects--
	c.objBytes -= int64(n)
	var ar *arena
	var arSlot uint32
	if sp.inuse == 0 {
		ar, arSlot = c.dropSpan(sp)
	} else {
		c.regroup(sp)
	}
	s.updateFreeable(c)
	c.mu.Unlock()
	s.handles.free(uint32(h))
	if ar != nil {
		s.releaseSpan(c, ar, arSlot)
	}
	if s.auto && s.freeable.Load() >= s.autoThreshold() {
		s.kickAuto()
	}
}

// SetLimit sets the MemUsed cap in bytes (0 = none). Lowering it below
// MemUsed frees nothing; it only makes Puts that need a new span fail.
func (s *Store) SetLimit(bytes int64) {
	if bytes < 0 {
		bytes = 0
	}
	s.limit.Store(bytes)
	if s.reserve {
		s.kickRefill() // the reserve's size follows the room under the limit
	}
}

// Limit returns the MemUsed cap in bytes, 0 if none.
func (s *Store) Limit() int64 { return s.limit.Load() }

// ResetMaxUsed restarts MemUsedMax from the current MemUsed (zram's
// "echo 0 > mem_used_max").
func (s *Store) ResetMaxUsed() { s.memUsedMax.Store(s.memUsed.Load()) }

// Close stops auto compaction and unmaps all memory. No other method may be
// running or called afterwards, except Stats and Close.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if s.auto {
			close(s.stop)
			<-s.done
		}
		if s.reserve {
			close(s.refillStop)
			<-s.refillDone
		}
		for _, p := range s.pools {
			if p != nil {
				p.close()
			}
		}
		s.handles.close()
		for i := range s.classes {
			c := &s.classes[i]
			c.mu.Lock()
			c.groups = [nGroups + 1]*span{}
			c.spans, c.freeIDs, c.spare = nil, nil, nil
			c.nspans, c.objects, c.objBytes, c.freeable = 0, 0, 0, 0
			c.mu.Unlock()
		}
		s.memUsed.Store(0)
		s.freeable.Store(0)
	})
	return nil
}

// charge reserves n bytes of MemUsed, refusing to pass the limit.
func (s *Store) charge(n int64) error {
	for {
		cur := s.memUsed.Load()
		next := cur + n
		if lim := s.limit.Load(); lim > 0 && next > lim {
			return ErrLimit
		}
		if s.memUsed.CompareAndSwap(cur, next) {
			for {
				m := s.memUsedMax.Load()
				if next <= m || s.memUsedMax.CompareAndSwap(m, next) {
					return nil
				}
			}
		}
	}
}

// newSpan maps a span for c and links it in group 0. Called with c.mu held.
func (s *Store) newSpan(c *class) (*span, error) {
	if s.reserve {
		return s.newReservedSpan(c)
	}
	if err := s.charge(c.spanBytes); err != nil {
		return nil, err
	}
	base, ar, arSlot, err := c.pool.alloc()
	if err != nil {
		s.memUsed.Add(-c.spanBytes)
		return nil, err
	}
	return c.linkSpan(base, ar, arSlot), nil
}

// newReservedSpan is newSpan in reserve mode: the memory comes from the
// pool's reserve and the span struct from c.spare, so it neither faults nor
// allocates; errRefill when one of them is not ready. The limit is checked
// before taking anything, so a refused Put leaves no trace (not even in
// MemUsedMax).
func (s *Store) newReservedSpan(c *class) (*span, error) {
	if lim := s.limit.Load(); lim > 0 && s.memUsed.Load()+c.spanBytes > lim {
		return nil, ErrLimit
	}
	if !c.ready() {
		c.needPrep.Store(true)
		s.kickRefill()
		return nil, errRefill
	}
	base, ar, arSlot, ok, low := c.pool.take()
	if len(c.spare) <= 1 || len(c.freeIDs) == 0 && cap(c.spans)-len(c.spans) <= 1 {
		c.needPrep.Store(true)
		low = true
	}
	if low {
		s.kickRefill()
	}
	if !ok {
		return nil, errRefill
	}
	if err := s.charge(c.spanBytes); err != nil {
		c.pool.untake(ar, arSlot)
		return nil, err
	}
	if s.takeHook != nil {
		s.takeHook(base, uintptr(c.spanBytes))
	}
	return c.linkSpan(base, ar, arSlot), nil
}

// linkSpan sets up a span struct for memory at base and links it in group 0.
// Called with c.mu held.
func (c *class) linkSpan(base unsafe.Pointer, ar *arena, arSlot uint32) *span {
	var sp *span
	if n := len(c.spare); n > 0 {
		sp = c.spare[n-1]
		c.spare = c.spare[:n-1]
	} else {
		sp = &span{rev: make([]uint32, c.objs)}
	}
	sp.base, sp.ar, sp.arSlot = base, ar, arSlot
	sp.inuse, sp.fresh, sp.freeHead = 0, 0, slotEnd
	if n := len(c.freeIDs); n > 0 {
		sp.id = c.freeIDs[n-1]
		c.freeIDs = c.freeIDs[:n-1]
		c.spans[sp.id] = sp
	} else {
		sp.id = uint32(len(c.spans))
		c.spans = append(c.spans, sp)
		if cap(c.freeIDs) < cap(c.spans) {
			// Sized with spans so dropSpan never allocates: compaction holds
			// the class lock there, and an allocation may have to assist the GC.
			ids := make([]uint32, len(c.freeIDs), cap(c.spans))
			copy(ids, c.freeIDs)
			c.freeIDs = ids
		}
	}
	c.nspans++
	sp.group = 0
	c.push(sp)
	return sp
}

// maxSpare bounds the span structs a class keeps for reuse: enough that a
// class hovering at a span boundary allocates nothing, few enough to be noise.
const maxSpare = 4

// dropSpan unlinks an empty span from c and returns where its memory is, for
// releaseSpan after c.mu is released. Called with c.mu held.
func (c *class) dropSpan(sp *span) (*arena, uint32) {
	c.unlink(sp)
	c.spans[sp.id] = nil
	c.freeIDs = append(c.freeIDs, sp.id)
	c.nspans--
	ar, arSlot := sp.ar, sp.arSlot
	sp.base, sp.ar = nil, nil
	if len(c.spare) < maxSpare {
		c.spare = append(c.spare, sp)
	}
	return ar, arSlot
}

// releaseSpan returns a dropped span's memory to the OS; outside c.mu, since
// madvise is a syscall and nobody can reach the span any more.
func (s *Store) releaseSpan(c *class, ar *arena, arSlot uint32) {
	c.pool.release(ar, arSlot)
	if s.memUsed.Add(-c.spanBytes) == 0 && s.reserve {
		// The store is empty (TRIM of everything, swapoff): let the
		// refiller give back what bursts added to the reserve.
		s.emptied.Store(true)
		s.kickRefill()
	}
}

// updateFreeable keeps c.freeable and the store-wide byte count in step.
// Called with c.mu held. The atomic is touched only when the count of
// freeable spans changes, i.e. once per objs frees at most.
func (s *Store) updateFreeable(c *class) {
	f := (c.nspans*int64(c.objs) - c.objects) / int64(c.objs)
	if f != c.freeable {
		s.freeable.Add((f - c.freeable) * c.spanBytes)
		c.freeable = f
	}
}

// pickSpan returns the fullest span with a free slot, or nil. Filling the
// fullest first leaves the sparse spans to drain, which is what lets Free and
// compaction give whole spans back.
func (c *class) pickSpan() *span {
	for g := nGroups - 1; g >= 0; g-- {
		if sp := c.groups[g]; sp != nil {
			return sp
		}
	}
	return nil
}

func (c *class) groupOf(sp *span) uint8 {
	if sp.inuse >= c.objs {
		return nGroups
	}
	return uint8(sp.inuse * nGroups / c.objs)
}

func (c *class) push(sp *span) {
	g := sp.group
	sp.prev, sp.next = nil, c.groups[g]
	if sp.next != nil {
		sp.next.prev = sp
	}
	c.groups[g] = sp
}

func (c *class) unlink(sp *span) {
	if sp.prev != nil {
		sp.prev.next = sp.next
	} else {
		c.groups[sp.group] = sp.next
	}
	if sp.next != nil {
		sp.next.prev = sp.prev
	}
	sp.prev, sp.next = nil, nil
}

// regroup moves sp to the list matching its fullness.
func (c *class) regroup(sp *span) {
	if g := c.groupOf(sp); g != sp.group {
		c.unlink(sp)
		sp.group = g
		c.push(sp)
	}
}

func (sp *span) allocSlot(id uint32) uint32 {
	var slot uint32
	if sp.freeHead != slotEnd {
		slot = sp.freeHead
		sp.freeHead = sp.rev[slot] &^ slotFree
	} else {
		slot = sp.fresh
		sp.fresh++
	}
	sp.rev[slot] = id
	sp.inuse++
	return slot
}

func (sp *span) freeSlot(slot uint32) {
	sp.rev[slot] = slotFree | sp.freeHead
	sp.freeHead = slot
	sp.inuse--
}

// ClassStats describes one size class that holds spans.
type ClassStats struct {
	Size        int   // slot size in bytes
	Pages       int   // pages per span
	ObjsPerSpan int   // slots per span
	Spans       int64 // spans held
	Objects     int64 // live objects
	ObjBytes    int64 // their bytes
	Freeable    int64 // spans compaction could free now
}

// Stats is a snapshot of the store's accounting, with zram's meanings.
type Stats struct {
	MemUsed        int64 // bytes of span memory held (mem_used_total)
	MemUsedMax     int64 // peak MemUsed since New or ResetMaxUsed (mem_used_max)
	Limit          int64 // MemUsed cap, 0 = none (mem_limit)
	ObjBytes       int64 // sum of live object sizes (compr_data_size)
	Objects        int64 // live objects
	PagesCompacted int64 // 4 KiB pages given back by compaction (pages_compacted)
	Spans          int64 // spans held
	FreeableBytes  int64 // span memory compaction could give back now
	// MetadataBytes is the store's own bookkeeping outside MemUsed: the handle
	// table (mmap'd, counted as mapped) plus Go-heap span and arena records.
	MetadataBytes    int64
	HandleTableBytes int64 // the handle table's part of MetadataBytes
	// LongestCompactStep is the longest time one compaction step held a class
	// lock, i.e. the worst stall compaction has imposed on that class's I/O.
	LongestCompactStep time.Duration
	AutoCompactions    int64 // background compaction runs
	// ReserveBytes is span memory faulted in ahead of need (Options.Reserve),
	// not yet holding objects: resident, but outside MemUsed and the limit.
	ReserveBytes int64
	ReserveWaits int64 // Puts that found the reserve empty and waited for the refiller
	NoMemFails   int64 // Puts failed with ErrNoMem
	Classes      []ClassStats
}

// Stats returns a snapshot. Classes are visited one at a time, so under
// concurrent I/O the totals are each class's state at slightly different
// moments (as zram's mm_stat is).
func (s *Store) Stats() Stats {
	st := Stats{
		MemUsed:            s.memUsed.Load(),
		MemUsedMax:         s.memUsedMax.Load(),
		Limit:              s.limit.Load(),
		PagesCompacted:     s.pagesCompacted.Load(),
		FreeableBytes:      s.freeable.Load(),
		HandleTableBytes:   s.handles.mappedBytes(),
		LongestCompactStep: time.Duration(s.longestStep.Load()),
		AutoCompactions:    s.autoRuns.Load(),
		ReserveWaits:       s.reserveWaits.Load(),
		NoMemFails:         s.noMem.Load(),
	}
	meta := st.HandleTableBytes + int64(len(s.classes))*int64(unsafe.Sizeof(class{}))
	for i := range s.classes {
		c := &s.classes[i]
		c.mu.RLock()
		st.Objects += c.objects
		st.ObjBytes += c.objBytes
		st.Spans += c.nspans
		perSpan := int64(unsafe.Sizeof(span{})) + 4*int64(c.objs)
		meta += (c.nspans+int64(len(c.spare)))*perSpan + 8*int64(cap(c.spans)) + 4*int64(cap(c.freeIDs))
		if c.nspans > 0 {
			st.Classes = append(st.Classes, ClassStats{
				Size: int(c.size), Pages: int(c.pages), ObjsPerSpan: int(c.objs),
				Spans: c.nspans, Objects: c.objects, ObjBytes: c.objBytes, Freeable: c.freeable,
			})
		}
		c.mu.RUnlock()
	}
	for _, p := range s.pools {
		if p != nil {
			meta += p.metaBytes()
			st.ReserveBytes += p.reserveBytes()
		}
	}
	st.MetadataBytes = meta
	return st
}
