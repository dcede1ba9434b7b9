package blockdev

// Recompression: zram's recompress (drivers/block/zram/zram_drv.c,
// scan_slots_for_recompress, recompress_slot and recompress_store) on this
// device's slots. The package recompress holds the syntax, the automatic
// policy and the progress bar; this file is the mechanism.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/pagestore"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

// RecompressType selects candidate pages, as zram's type=. The zero value
// (no type= given) makes every stored page a candidate, as in zram.
type RecompressType uint8

const (
	RecompressIdle     RecompressType = 1 << iota // pages marked idle
	RecompressHuge                                // pages stored raw
	RecompressHugeIdle = RecompressIdle | RecompressHuge
)

func (t RecompressType) String() string {
	switch t {
	case 0:
		return "all"
	case RecompressIdle:
		return "idle"
	case RecompressHuge:
		return "huge"
	case RecompressHugeIdle:
		return "huge_idle"
	}
	return fmt.Sprintf("RecompressType(%d)", uint8(t))
}

// RecompressRequest is one recompress run, with zram's parameters.
type RecompressRequest struct {
	Type RecompressType
	// Threshold, if set, skips pages whose compressed size is below it and
	// keeps a result only if it is below it too (1..HugeThreshold-1).
	Threshold int
	// MaxPages bounds the pages tried, successful or not; 0 means no limit.
	MaxPages uint64
	// Algorithm tries only the secondary algorithm of that name, searched
	// from Priority (or 1) upwards.
	Algorithm string
	// Priority tries only that priority (1..3); 0 tries every secondary
	// priority above the page's own, lowest first.
	Priority int
}

// RecompressResult is a run's progress so far, or its outcome.
type RecompressResult struct {
	Candidates     int64         // pages the scan picked
	Done           int64         // candidates dealt with (tried or skipped)
	Attempted      int64         // pages tried: what MaxPages counts
	Recompressed   int64         // pages now stored smaller
	Skipped        int64         // below the threshold, or written, trimmed or freed since the scan
	Incompressible int64         // pages newly flagged: even the highest priority did not help
	Failed         int64         // smaller result found but no store memory for it (mem_limit)
	BytesSaved     int64         // compr_data_size given back
	MemSaved       int64         // size-class bytes given back (what the store can reuse)
	CPU            time.Duration // CPU time of the goroutine doing the run
	Elapsed        time.Duration
	Preempted      bool // a background run that stopped early for a manual one
}

// RecompressTotals are a device's recompression figures since it was created.
type RecompressTotals struct {
	Runs           int64
	BackgroundRuns int64
	Scanned        int64 // candidates picked by scans
	Attempted      int64
	Recompressed   int64
	Skipped        int64
	Incompressible int64 // pages ever flagged incompressible
	Failed         int64
	BytesSaved     int64
	MemSaved       int64
	CPU            time.Duration
}

// ErrNoRecompAlgorithm means the request names no usable secondary
// algorithm (zram: EINVAL).
var ErrNoRecompAlgorithm = errors.New("blockdev: no recompression algorithm")

type recompCounters struct {
	runs, backgroundRuns, scanned, attempted, recompressed, skipped atomic.Int64
	incompressible, failed, bytesSaved, memSaved, cpuNanos          atomic.Int64
}

// recompState lets one run at a time own the slots' slotRecomp flags
// (zram: pp_in_progress). Manual runs queue; background runs give way.
type recompState struct {
	once    sync.Once
	sem     chan struct{}
	waiting atomic.Int32 // manual runs waiting for sem
}

func (r *recompState) init() { r.once.Do(func() { r.sem = make(chan struct{}, 1) }) }

// Recompress runs zram's recompress: it picks stored pages by type, and
// re-encodes each, largest first, with the secondary algorithms, keeping a
// result only if it lands in a smaller size class. progress, if not nil, is
// called from the running goroutine about ten times a second and once at
// the end. A run waits for any other run on the device; a background run
// (RecompressBackground) stops early to let it in. Cancelling ctx stops the
// run between pages; pages done stay done.
func (d *Device) Recompress(ctx context.Context, req RecompressRequest, progress func(RecompressResult)) (RecompressResult, error) {
	d.recomp.init()
	d.recomp.waiting.Add(1)
	select {
	case d.recomp.sem <- struct{}{}:
		d.recomp.waiting.Add(-1)
	case <-ctx.Done():
		d.recomp.waiting.Add(-1)
		return RecompressResult{}, fmt.Errorf("blockdev: recompress %s: %w", d.name, ctx.Err())
	}
	defer func() { <-d.recomp.sem }()
	return d.recompress(ctx, req, progress, nil)
}

// RecompressBackground is Recompress for the automatic policy: it does not
// wait for another run (it returns a zero result at once if one is going),
// it stops early (Preempted) when a manual run asks for the device, and it
// calls pace after every candidate, from the running goroutine, so the
// caller can sleep there to stay within a CPU budget.
func (d *Device) RecompressBackground(ctx context.Context, req RecompressRequest, pace func(RecompressResult)) (RecompressResult, error) {
	d.recomp.init()
	select {
	case d.recomp.sem <- struct{}{}:
	default:
		return RecompressResult{Preempted: true}, nil
	}
	defer func() { <-d.recomp.sem }()
	return d.recompress(ctx, req, nil, pace)
}

// RecompressTotals returns the device's recompression figures.
func (d *Device) RecompressTotals() RecompressTotals {
	c := &d.stats.recomp
	return RecompressTotals{
		Runs: c.runs.Load(), BackgroundRuns: c.backgroundRuns.Load(), Scanned: c.scanned.Load(),
		Attempted: c.attempted.Load(), Recompressed: c.recompressed.Load(), Skipped: c.skipped.Load(),
		Incompressible: c.incompressible.Load(), Failed: c.failed.Load(),
		BytesSaved: c.bytesSaved.Load(), MemSaved: c.memSaved.Load(), CPU: time.Duration(c.cpuNanos.Load()),
	}
}

// recompPlan is a request resolved against the device's algorithms.
type recompPlan struct {
	typ       RecompressType
	threshold int
	maxPages  uint64
	prio      int  // first priority to try (a page starts above its own)
	prioMax   int  // one past the last priority to try
	flagTop   bool // prioMax reaches the device's highest priority: failures are final
}

// plan follows recompress_store: priority=0 means 1; priority=N limits the
// run to N; algo= searches from prio upwards and limits the run to the
// priority found; the range is cut at the highest configured priority.
// zram cuts it at num_active_comps, the count of configured algorithms, so a
// gap (priorities 1 and 3) would keep it from ever reaching 3; we use the
// highest configured priority instead.
func (d *Device) plan(req RecompressRequest) (recompPlan, error) {
	p := recompPlan{typ: req.Type, threshold: req.Threshold, maxPages: req.MaxPages}
	if req.Type&^RecompressHugeIdle != 0 {
		return p, fmt.Errorf("blockdev: recompress: bad type %d", req.Type)
	}
	if req.Threshold < 0 || req.Threshold >= HugeThreshold {
		return p, fmt.Errorf("blockdev: recompress: threshold %d out of range 0..%d", req.Threshold, HugeThreshold-1)
	}
	if req.Priority < 0 || req.Priority > streams.MaxPriority {
		return p, fmt.Errorf("blockdev: recompress: priority %d out of range 1..%d", req.Priority, streams.MaxPriority)
	}
	top := 0
	for prio := 1; prio <= streams.MaxPriority; prio++ {
		if d.comps.current[prio].Load() != nil {
			top = prio
		}
	}
	p.prio, p.prioMax = max(req.Priority, 1), top+1
	if req.Priority > 0 {
		p.prioMax = req.Priority + 1
	}
	if req.Algorithm != "" {
		found := false
		for ; p.prio <= streams.MaxPriority; p.prio++ {
			if c := d.comps.current[p.prio].Load(); c != nil && c.algo == req.Algorithm {
				p.prioMax, found = p.prio+1, true
				break
			}
		}
		if !found {
			return p, fmt.Errorf("%w: %s has no secondary algorithm %q", ErrNoRecompAlgorithm, d.name, req.Algorithm)
		}
	}
	p.prioMax = min(p.prioMax, top+1)
	if p.prio >= p.prioMax {
		return p, fmt.Errorf("%w: %s has none at priority %d (set one with recomp_algorithm)", ErrNoRecompAlgorithm, d.name, p.prio)
	}
	p.flagTop = p.prioMax == top+1
	return p, nil
}

type recompCand struct {
	page uint64
	size uint16
}

// slotPrio is the priority that compressed a stored page. A huge page holds
// no compressor reference (its comp id may since name another compressor):
// it counts as priority 0.
func (d *Device) slotPrio(s *slot) int {
	if s.flags&slotHuge != 0 {
		return 0
	}
	return d.comps.byID[s.comp].Load().prio // the page's reference keeps it
}

func (d *Device) recompress(ctx context.Context, req RecompressRequest, progress, pace func(RecompressResult)) (res RecompressResult, err error) {
	p, err := d.plan(req)
	if err != nil {
		return res, err
	}
	// The thread's CPU clock is the run's CPU time only while the goroutine
	// stays on one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, cpu0 := time.Now(), threadCPU()
	c := &d.stats.recomp
	c.runs.Add(1)
	if pace != nil {
		c.backgroundRuns.Add(1)
	}
	cands := d.scanForRecompress(p)
	res.Candidates = int64(len(cands))
	c.scanned.Add(res.Candidates)

	buf := d.pages.Get().(*[PageSize]byte)
	defer d.pages.Put(buf)
	var lastReport time.Time
	i := 0
	defer func() {
		// zram's release_pp_ctl: candidates not reached lose their mark.
		for _, cand := range cands[i:] {
			d.locks.lock(cand.page)
			d.slots[cand.page].flags &^= slotRecomp
			d.locks.unlock(cand.page)
		}
		res.CPU, res.Elapsed = threadCPU()-cpu0, time.Since(start)
		c.cpuNanos.Add(int64(res.CPU))
		if progress != nil {
			progress(res)
		}
	}()
	for ; i < len(cands); i++ {
		if p.maxPages > 0 && uint64(res.Attempted) >= p.maxPages {
			break
		}
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("blockdev: recompress %s: %w", d.name, err)
		}
		if pace != nil && d.recomp.waiting.Load() > 0 {
			res.Preempted = true
			break
		}
		if err := d.recompressPage(cands[i].page, &p, buf, &res); err != nil {
			i++ // its mark is already cleared
			return res, err
		}
		res.Done++
		if pace != nil {
			res.CPU, res.Elapsed = threadCPU()-cpu0, time.Since(start)
			pace(res)
		} else if progress != nil && time.Since(lastReport) >= 100*time.Millisecond {
			lastReport = time.Now()
			res.CPU, res.Elapsed = threadCPU()-cpu0, time.Since(start)
			progress(res)
		}
	}
	return res, nil
}

// scanForRecompress is scan_slots_for_recompress: it marks the candidates
// slotRecomp (zram's ZRAM_PP_SLOT) and returns them largest first, in page
// order within a size (zram sorts into 64-byte buckets; we sort exactly).
func (d *Device) scanForRecompress(p recompPlan) []recompCand {
	var bySize [PageSize + 1]int
	var cands []recompCand
	for i := range d.slots {
		page := uint64(i)
		d.locks.lock(page)
		s := &d.slots[i]
		switch {
		case s.empty(), s.flags&(slotSame|slotIncompressible) != 0:
		case p.typ&RecompressIdle != 0 && s.flags&slotIdle == 0:
		case p.typ&RecompressHuge != 0 && s.flags&slotHuge == 0:
		case d.slotPrio(s)+1 >= p.prioMax: // already at the highest priority tried
		default:
			s.flags |= slotRecomp
			cands = append(cands, recompCand{page: page, size: s.size})
			bySize[s.size]++
		}
		d.locks.unlock(page)
	}
	// Counting sort, descending by size, stable in page order.
	pos := 0
	for size := PageSize; size >= 0; size-- {
		n := bySize[size]
		bySize[size] = pos
		pos += n
	}
	sorted := make([]recompCand, len(cands))
	for _, c := range cands {
		sorted[bySize[c.size]] = c
		bySize[c.size]++
	}
	return sorted
}

// recompressPage is recompress_slot for one candidate. The page is decoded
// under its lock (recompPick), compressed without it (recompEncode: a slow
// secondary algorithm must not stall I/O on the page), and the result
// installed under the lock (recompInstall) only if the slot still carries
// slotRecomp: every write, trim and free replaces the slot and so drops the
// mark, and then the new data wins. Reads meanwhile see the old, still
// valid, object.
func (d *Device) recompressPage(page uint64, p *recompPlan, buf *[PageSize]byte, res *RecompressResult) error {
	cand, ok, err := d.recompPick(page, p, buf, res)
	if !ok || err != nil {
		return err
	}
	res.Attempted++
	d.stats.recomp.attempted.Add(1)
	enc, err := d.recompEncode(page, p, buf, cand)
	if err != nil {
		return d.dropMark(page, err)
	}
	d.recompInstall(page, p, cand, enc, res)
	return nil
}

// recompCandidate is a page as recompPick found it.
type recompCandidate struct {
	size, class int    // its object's size and size class
	handle      uint64 // its object: the page was not rewritten if it still has it
	first       int    // the first priority to try: above the page's own
}

// recompPick decodes the page into buf if it is still a candidate: marked
// by the scan and not below the threshold. ok false: skipped (counted).
func (d *Device) recompPick(page uint64, p *recompPlan, buf *[PageSize]byte, res *RecompressResult) (c recompCandidate, ok bool, err error) {
	st := &d.stats.recomp
	d.locks.lock(page)
	defer d.locks.unlock(page)
	s := &d.slots[page]
	// zram: "Do not recompress objects that are already small enough", and
	// such pages do not count against max_pages.
	if s.flags&slotRecomp == 0 || p.threshold > 0 && int(s.size) < p.threshold {
		s.flags &^= slotRecomp
		res.Skipped++
		st.skipped.Add(1)
		return c, false, nil
	}
	if err := d.decodeLocked(page, buf[:]); err != nil {
		s.flags &^= slotRecomp
		return c, false, fmt.Errorf("blockdev: recompress: %w", err)
	}
	// zram clears the idle mark on every attempt, so the page is not picked
	// again by the next idle-based pass unless it is marked idle again.
	s.flags &^= slotIdle
	c = recompCandidate{size: int(s.size), class: d.store.ClassSize(int(s.size)), handle: s.handle, first: max(p.prio, d.slotPrio(s)+1)}
	return c, true, nil
}

// recompEncoded is what recompEncode found: a stored smaller object (comp
// set, holding the reference the page will keep), or why there is none.
type recompEncoded struct {
	comp  *compressor
	h     pagestore.Handle
	n     int
	noMem bool // a smaller result found, but mem_limit refused it
	last  int  // the last priority tried, -1 if none
}

// recompEncode re-encodes buf with each priority from c.first on until one
// lands in a smaller size class, and stores that result.
func (d *Device) recompEncode(page uint64, p *recompPlan, buf *[PageSize]byte, c recompCandidate) (recompEncoded, error) {
	e := recompEncoded{last: -1}
	// A result must be under the huge threshold (for a huge page that is
	// what makes it worth decompressing) and under the threshold if given.
	limit := HugeThreshold - 1
	if p.threshold > 0 {
		limit = min(limit, p.threshold-1)
	}
	for prio := c.first; prio < p.prioMax; prio++ {
		comp, err := d.comps.acquire(prio)
		if err != nil {
			continue // removed meanwhile: zram skips an empty priority too
		}
		e.last = prio
		stream, err := comp.pool.Get()
		if err != nil {
			comp.pool.Unref()
			return e, fmt.Errorf("blockdev: recompress page %d: %w", page, err)
		}
		m, err := stream.Ctx.Compress(stream.Buf[:limit], buf[:])
		if errors.Is(err, zcomp.ErrNoSpace) || err == nil && d.store.ClassSize(m) >= c.class {
			comp.pool.Put(stream)
			comp.pool.Unref()
			continue // no progress: try the next priority
		}
		if err != nil {
			comp.pool.Put(stream)
			comp.pool.Unref()
			return e, fmt.Errorf("blockdev: recompress page %d with %s: %w", page, comp.algo, err)
		}
		h, err := d.store.Put(stream.Buf[:m])
		comp.pool.Put(stream)
		if err != nil {
			comp.pool.Unref()
			if !errors.Is(err, pagestore.ErrLimit) {
				return e, fmt.Errorf("blockdev: recompress page %d: %w", page, err)
			}
			// The old object is still stored: keep it (zram ignores
			// mem_limit here; our store enforces it on every Put).
			e.noMem = true
			return e, nil
		}
		e.comp, e.h, e.n = comp, h, m
		return e, nil
	}
	return e, nil
}

// recompInstall puts e in the page's place, unless the page changed
// meanwhile, and counts the outcome.
func (d *Device) recompInstall(page uint64, p *recompPlan, c recompCandidate, e recompEncoded, res *RecompressResult) {
	st := &d.stats.recomp
	d.locks.lock(page)
	defer d.locks.unlock(page)
	s := &d.slots[page]
	if s.flags&slotRecomp == 0 || s.handle != c.handle {
		// Written, trimmed or freed meanwhile: the new data wins.
		if e.comp != nil {
			d.store.Free(e.h)
			e.comp.pool.Unref()
		}
		res.Skipped++
		st.skipped.Add(1)
		return
	}
	s.flags &^= slotRecomp
	switch {
	case e.comp != nil:
		atime := s.atime // recompression is not an access
		d.forgetLocked(page, true)
		// acquire's pin on the compressor becomes the page's reference.
		d.storeLocked(page, slot{handle: uint64(e.h), size: uint16(e.n), comp: e.comp.id, atime: atime})
		saved, memSaved := int64(c.size-e.n), int64(c.class-d.store.ClassSize(e.n))
		res.Recompressed++
		res.BytesSaved += saved
		res.MemSaved += memSaved
		st.recompressed.Add(1)
		st.bytesSaved.Add(saved)
		st.memSaved.Add(memSaved)
	case e.noMem:
		res.Failed++
		st.failed.Add(1)
	case p.flagTop && e.last == p.prioMax-1:
		// Even the highest priority did not help: never try it again
		// (until it is rewritten).
		s.flags |= slotIncompressible
		d.stats.incompressible.Add(1)
		res.Incompressible++
		st.incompressible.Add(1)
	}
}

// dropMark clears a candidate's mark after a failed attempt and returns err.
func (d *Device) dropMark(page uint64, err error) error {
	d.locks.lock(page)
	d.slots[page].flags &^= slotRecomp
	d.locks.unlock(page)
	return err
}

// threadCPU is the calling thread's CPU time; callers lock the goroutine to
// its thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
