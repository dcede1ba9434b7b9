package pagestore

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// nonResident counts the pages of [p, p+n) not in RAM.
func nonResident(t testing.TB, p unsafe.Pointer, n uintptr) int {
	vec := make([]byte, n/PageSize)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(p), n, uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Errorf("mincore: %v", errno)
		return 0
	}
	missing := 0
	for _, v := range vec {
		missing += int(1 - v&1)
	}
	return missing
}

// reservedSpans returns the spans held in p's reserve.
func reservedSpans(p *spanPool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.res)
}

// TestReserveFilledAtNew: New faults every pool's reserve in up to its high
// watermark and the handle table's first two chunks, all resident, outside
// MemUsed.
func TestReserveFilledAtNew(t *testing.T) {
	s := newStore(t, Options{Reserve: true})
	st := s.Stats()
	var want int64
	for _, p := range s.pools {
		if p == nil {
			continue
		}
		if n := reservedSpans(p); n != p.high {
			t.Errorf("pool of %d-byte spans: %d reserved, high watermark %d", p.spanBytes, n, p.high)
		}
		want += int64(p.high) * int64(p.spanBytes)
		p.mu.Lock()
		for _, r := range p.res {
			if m := nonResident(t, unsafe.Add(r.a.base, uintptr(r.slot)*p.spanBytes), p.spanBytes); m != 0 {
				t.Errorf("reserved span has %d pages not resident", m)
			}
		}
		p.mu.Unlock()
	}
	if st.ReserveBytes != want || st.MemUsed != 0 {
		t.Fatalf("ReserveBytes %d (want %d), MemUsed %d (want 0)", st.ReserveBytes, want, st.MemUsed)
	}
	if want > 4<<20 {
		t.Fatalf("initial reserve is %d KiB, meant to be a few MiB", want>>10)
	}
	if s.handles.ready != 2 {
		t.Fatalf("%d handle chunks ready, want 2", s.handles.ready)
	}
	for i := range 2 {
		if m := nonResident(t, unsafe.Pointer(s.handles.dir[i].Load()), hChunkBytes); m != 0 {
			t.Fatalf("handle chunk %d: %d pages not resident", i, m)
		}
	}
}

// TestReservePutTakesFaultedMemory: every span Put opens comes from the
// reserve with all its pages already resident, across every pool, while the
// refiller keeps up; and the handle table's next chunk is faulted in ahead.
func TestReservePutTakesFaultedMemory(t *testing.T) {
	s := newStore(t, Options{Reserve: true})
	var taken, missing atomic.Int64
	s.takeHook = func(base unsafe.Pointer, n uintptr) {
		taken.Add(1)
		missing.Add(int64(nonResident(t, base, n)))
	}
	m := model{}
	// 150k objects: past two handle chunks, with spans of every size.
	for i := range 150000 {
		size := 1 + (i*37)%MaxObjectSize
		if i%4 == 0 {
			size = 2048 + i%64 // one class hot, as a burst of similar pages is
		}
		put(t, s, m, uint64(i), size)
	}
	checkAll(t, s, m)
	checkStats(t, s, m)
	if taken.Load() == 0 || missing.Load() != 0 {
		t.Fatalf("%d spans taken from the reserve, %d of their pages were not resident", taken.Load(), missing.Load())
	}
	st := s.Stats()
	if st.NoMemFails != 0 {
		t.Fatalf("%d Puts failed with ErrNoMem", st.NoMemFails)
	}
	t.Logf("%d spans taken, %d waits, reserve %d KiB, MemUsed %d MiB", taken.Load(), st.ReserveWaits, st.ReserveBytes>>10, st.MemUsed>>20)
	s.handles.mu.Lock()
	next, ready := s.handles.next, s.handles.ready
	s.handles.mu.Unlock()
	if next>>hChunkShift >= ready {
		t.Fatalf("handle %d in chunk %d, only %d chunks ready", next, next>>hChunkShift, ready)
	}
}

// TestReserveHeldFailsWithoutFaulting: with the refiller stopped, Puts that
// need a span beyond the reserve fail with ErrNoMem after the bounded wait,
// touching nothing; what was stored reads back; once the refiller runs
// again, Puts succeed.
func TestReserveHeldFailsWithoutFaulting(t *testing.T) {
	s := newStore(t, Options{Reserve: true, ReserveWait: 5 * time.Millisecond})
	s.refillHeld.Store(true)
	c := s.classFor(3000)
	p := c.pool
	m := model{}
	var err error
	var fails int
	for i := 0; ; i++ {
		buf := make([]byte, 3000)
		fill(buf, uint64(i))
		var h Handle
		t0 := time.Now()
		h, err = s.Put(buf)
		if err != nil {
			if !errors.Is(err, ErrNoMem) {
				t.Fatalf("put %d: %v, want ErrNoMem", i, err)
			}
			if d := time.Since(t0); d < 5*time.Millisecond || d > 2*time.Second {
				t.Fatalf("refused Put took %v, want the 5ms wait", d)
			}
			fails++
			if fails == 3 {
				break
			}
			continue
		}
		if fails > 0 {
			t.Fatalf("put %d succeeded after a refusal with the refiller held", i)
		}
		m[h] = obj{uint64(i), 3000}
	}
	// Every span the class got came from the reserve, which is now empty
	// (or the class ran out of spare span structs first).
	if n := reservedSpans(p); n != 0 && c.ready() {
		t.Fatalf("ErrNoMem with %d spans still reserved", n)
	}
	st := s.Stats()
	if st.NoMemFails != 3 || st.MemUsed != c.nspans*c.spanBytes {
		t.Fatalf("NoMemFails %d, MemUsed %d for %d spans", st.NoMemFails, st.MemUsed, c.nspans)
	}
	// Objects that fit an existing span's free slot are still stored.
	if len(m) > 1 {
		var h Handle
		for h = range m {
			break
		}
		s.Free(h)
		delete(m, h)
		put(t, s, m, 99, 3000)
	}
	checkAll(t, s, m)
	checkStats(t, s, m)

	s.refillHeld.Store(false)
	s.kickRefill()
	for i := range 200 {
		put(t, s, m, uint64(1000+i), 3000)
	}
	checkAll(t, s, m)
}

// TestReserveHandleChunkNotReady: in reserve mode the handle table refuses
// ids in a chunk the refiller has not faulted in.
func TestReserveHandleChunkNotReady(t *testing.T) {
	s := newStore(t, Options{Reserve: true, ReserveWait: time.Millisecond})
	s.refillHeld.Store(true)
	s.handles.mu.Lock()
	s.handles.next = 2*hChunkLen - 1 // the last id of the second ready chunk
	s.handles.live = hChunkLen       // pretend the rest is in use
	s.handles.mu.Unlock()
	if _, err := s.Put([]byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put([]byte{1, 2, 3}); !errors.Is(err, ErrNoMem) {
		t.Fatalf("Put in an unfaulted handle chunk: %v, want ErrNoMem", err)
	}
	s.refillHeld.Store(false)
	s.refillAll(false) // as the refiller would (the 1 ms wait is too short to count on it)
	if _, err := s.Put([]byte{1, 2, 3}); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
}

// TestReserveLimitExact: the reserve neither lets MemUsed pass the limit nor
// makes a Put that fits fail, and shrinks to what the limit leaves room for.
func TestReserveLimitExact(t *testing.T) {
	probe := newStore(t, Options{})
	c := probe.classFor(2100)
	limit := 5 * c.spanBytes
	s := newStore(t, Options{Reserve: true, Limit: limit})
	m := model{}
	buf := make([]byte, 2100)
	n := 0
	for {
		fill(buf, uint64(n))
		h, err := s.Put(buf)
		if errors.Is(err, ErrLimit) {
			break
		}
		if err != nil {
			t.Fatalf("put %d: %v", n, err)
		}
		m[h] = obj{uint64(n), 2100}
		n++
	}
	if want := 5 * int(c.objs); n != want {
		t.Fatalf("stored %d objects under a 5-span limit, want %d", n, want)
	}
	st := s.Stats()
	if st.MemUsed != limit || st.MemUsedMax != limit || st.NoMemFails != 0 {
		t.Fatalf("MemUsed %d max %d limit %d, NoMemFails %d", st.MemUsed, st.MemUsedMax, limit, st.NoMemFails)
	}
	checkAll(t, s, m)
	// Raising the limit wakes the refiller; the next span is there.
	s.SetLimit(limit + c.spanBytes)
	fill(buf, 7)
	h, err := s.Put(buf)
	if err != nil {
		t.Fatalf("after raising the limit: %v", err)
	}
	m[h] = obj{7, 2100}
	checkAll(t, s, m)
}

// TestReserveZeroAlloc: Put allocates nothing even when it opens new spans
// (from the reserve, with spare span structs), and Free nothing when it
// gives spans back to the reserve. The refiller is held so its own
// allocations do not count.
func TestReserveZeroAlloc(t *testing.T) {
	s := newStore(t, Options{Reserve: true})
	s.refillHeld.Store(true)
	buf := make([]byte, 2100)
	fill(buf, 3)
	c := s.classFor(len(buf))
	hs := make([]Handle, 0, 4*c.objs)
	spans0 := c.nspans
	runs := 3*int(c.objs) - 1 // AllocsPerRun calls once more to warm up
	allocs := testing.AllocsPerRun(runs, func() {
		h, err := s.Put(buf)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	})
	if allocs != 0 {
		t.Fatalf("Put allocates %v times per run", allocs)
	}
	if got := c.nspans - spans0; got != 3 {
		t.Fatalf("Puts opened %d spans, want 3", got)
	}
	i := 0
	allocs = testing.AllocsPerRun(len(hs)-1, func() {
		s.Free(hs[i])
		i++
	})
	if allocs != 0 || c.nspans != 0 {
		t.Fatalf("Free allocates %v times per run; %d spans left", allocs, c.nspans)
	}
}

// TestReserveKeepsReleasedSpans: spans Free (or compaction) gives back refill
// the reserve, pages and all, up to its high watermark; past it they go back
// to the OS. So the refiller does not fault in what was just discarded.
func TestReserveKeepsReleasedSpans(t *testing.T) {
	s := newStore(t, Options{Reserve: true})
	c := s.classFor(2100)
	p := c.pool
	m := model{}
	var hs []Handle
	spans := 3 * p.high
	for i := range spans * int(c.objs) {
		hs = append(hs, put(t, s, m, uint64(i), 2100))
	}
	s.refillHeld.Store(true)
	s.refillAll(true) // top up past the hysteresis, so the counts below are exact
	res0, _ := residentPages(t, s)
	// Empty p.high/2 spans: the reserve is already full, so they are discarded.
	free := func(hs []Handle) {
		for _, h := range hs {
			s.Free(h)
			delete(m, h)
		}
	}
	free(hs[:p.high/2*int(c.objs)])
	if n := reservedSpans(p); n != p.high {
		t.Fatalf("reserve %d spans, want %d", n, p.high)
	}
	res1, _ := residentPages(t, s)
	if want := res0 - p.high/2*int(c.pages); res1 != want {
		t.Fatalf("resident pages %d after freeing spans, want %d", res1, want)
	}
	// Take spans out of the reserve, then free as many: they come back.
	for i := range p.high / 2 * int(c.objs) {
		hs = append(hs, put(t, s, m, uint64(1e6+i), 2100))
	}
	taken := p.high - reservedSpans(p)
	if taken == 0 {
		t.Fatal("no span taken from the reserve")
	}
	free(hs[p.high/2*int(c.objs) : p.high*int(c.objs)])
	if n := reservedSpans(p); n != p.high {
		t.Fatalf("reserve %d spans after frees, want %d (refilled by released spans)", n, p.high)
	}
	free(hs[p.high*int(c.objs):])
	if st := s.Stats(); st.MemUsed != 0 {
		t.Fatalf("MemUsed %d after freeing everything", st.MemUsed)
	}
	// Only the reserve stays resident.
	var reserved int
	for _, q := range s.pools {
		if q != nil {
			reserved += reservedSpans(q) * int(q.spanBytes/PageSize)
		}
	}
	if res, _ := residentPages(t, s); res != reserved {
		t.Fatalf("%d arena pages resident after freeing everything, reserve holds %d", res, reserved)
	}
}

// TestReserveBoost: a pool that runs dry has its watermarks raised, up to
// the per-pool and total caps.
func TestReserveBoost(t *testing.T) {
	s := newStore(t, Options{Reserve: true})
	p := s.classFor(2100).pool
	high0 := p.high
	p.dry.Store(true)
	s.refillAll(false)
	if p.high != 2*high0 || p.low != high0 {
		t.Fatalf("after running dry: high %d low %d, want %d %d", p.high, p.low, 2*high0, high0)
	}
	for range 10 {
		p.dry.Store(true)
		s.refillAll(false)
	}
	if p.high*int(p.spanBytes) > reservePoolMax || s.highTotal.Load() > reserveTotalMax+reservePoolMax {
		t.Fatalf("high %d spans of %d bytes, total %d", p.high, p.spanBytes, s.highTotal.Load())
	}
	if n := reservedSpans(p); n != p.high {
		t.Fatalf("reserve %d spans, high %d", n, p.high)
	}
}

// TestReserveBurst: Puts from several goroutines at full speed (far faster
// than swap writes) wait for the refiller now and then but never fail.
func TestReserveBurst(t *testing.T) {
	s := newStore(t, Options{Reserve: true})
	var wg sync.WaitGroup
	per := 60000
	if testing.Short() {
		per = 10000
	}
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, MaxObjectSize)
			for i := range per {
				n := 1800 + (i*7+g)%600 // one hot pool, as fio's half-compressible pages
				if _, err := s.Put(buf[:n]); err != nil {
					t.Errorf("put %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	t.Logf("MemUsed %d MiB, %d waits, reserve %d KiB", st.MemUsed>>20, st.ReserveWaits, st.ReserveBytes>>10)
	if st.NoMemFails != 0 {
		t.Fatalf("%d Puts failed with ErrNoMem", st.NoMemFails)
	}
}

// TestReserveSlowPopulateIsProgress: a refiller that faults pages in slowly
// (a loaded machine, a TCG guest) is not a stuck one. Each populate call
// here takes 2 ms per 4 KiB page, so a run of 64 spans would take far longer
// than ReserveWait; the refiller reports progress after every 64 KiB piece,
// and no Put may fail.
func TestReserveSlowPopulateIsProgress(t *testing.T) {
	// Set before the store (and its refiller) exists, restored after it is
	// closed: cleanups run last-registered first.
	populateHook = func(p unsafe.Pointer, n uintptr) {
		time.Sleep(time.Duration(n/PageSize) * 2 * time.Millisecond)
		populate(p, n)
	}
	t.Cleanup(func() { populateHook = populate })
	s := newStore(t, Options{Reserve: true, ReserveWait: 60 * time.Millisecond})
	buf := make([]byte, MaxObjectSize)
	// 4 MiB of 4 KiB objects drains the 4 KiB class's pool many times over.
	for i := range 1024 {
		if _, err := s.Put(buf); err != nil {
			t.Fatalf("put %d: %v (the refiller was slow, not stuck)", i, err)
		}
	}
	st := s.Stats()
	t.Logf("%d waits for the refiller, %d refill steps", st.ReserveWaits, s.refilled.Load())
	if st.ReserveWaits == 0 {
		t.Errorf("no Put waited for the refiller: the test proves nothing")
	}
}

// TestTryPutNeverWaits: with the refiller held and the reserve drained,
// TryPut answers ErrWouldWait at once, stores nothing and counts no ErrNoMem
// failure, where Put would wait ReserveWait; objects that fit a free slot
// are still stored; once the refiller runs, TryPut stores again.
func TestTryPutNeverWaits(t *testing.T) {
	s := newStore(t, Options{Reserve: true, ReserveWait: time.Second})
	s.refillHeld.Store(true)
	m := model{}
	buf := make([]byte, 3000)
	var i int
	for ; ; i++ {
		fill(buf, uint64(i))
		t0 := time.Now()
		h, err := s.TryPut(buf)
		if errors.Is(err, ErrWouldWait) {
			if d := time.Since(t0); d >= time.Second {
				t.Fatalf("TryPut waited %v, Put's ReserveWait, before ErrWouldWait", d)
			}
			break
		}
		if err != nil {
			t.Fatalf("try put %d: %v", i, err)
		}
		m[h] = obj{uint64(i), 3000}
	}
	if i == 0 {
		t.Fatal("the first TryPut already would wait: the reserve was not filled at New")
	}
	checkAll(t, s, m)
	checkStats(t, s, m)
	if st := s.Stats(); st.NoMemFails != 0 {
		t.Fatalf("TryPut counted %d ErrNoMem failures", st.NoMemFails)
	}
	// A free slot needs no new span.
	var h Handle
	for h = range m {
		break
	}
	s.Free(h)
	delete(m, h)
	fill(buf, 99)
	if h, err := s.TryPut(buf); err != nil {
		t.Fatalf("TryPut into a free slot: %v", err)
	} else {
		m[h] = obj{99, 3000}
	}

	s.refillHeld.Store(false)
	s.kickRefill()
	deadline := time.Now().Add(10 * time.Second)
	for j := 0; j < 200; j++ {
		fill(buf, uint64(1000+j))
		h, err := s.TryPut(buf)
		if errors.Is(err, ErrWouldWait) && time.Now().Before(deadline) {
			j--
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("try put %d after the refiller ran: %v", j, err)
		}
		m[h] = obj{uint64(1000 + j), 3000}
	}
	checkAll(t, s, m)
}

// TestReserveStalledPopulate: a refiller that sits inside populate
// delivering nothing fails waiting Puts with ErrNoMem only while the system
// is short of free memory (reclaim); with memory plentiful it was only
// descheduled there, and the Puts wait for it.
func TestReserveStalledPopulate(t *testing.T) {
	for _, short := range []bool{false, true} {
		t.Run(fmt.Sprintf("short=%v", short), func(t *testing.T) {
			// Every populate after New stalls 300 ms in one piece: 6 times
			// ReserveWait without progress.
			var stall atomic.Bool
			populateHook = func(p unsafe.Pointer, n uintptr) {
				if stall.Load() {
					time.Sleep(300 * time.Millisecond)
				}
				populate(p, n)
			}
			memoryShort = func(*Store) bool { return short }
			t.Cleanup(func() {
				populateHook = populate
				memoryShort = memoryShortSysinfo
			})
			s := newStore(t, Options{Reserve: true, ReserveWait: 50 * time.Millisecond})
			stall.Store(true)
			buf := make([]byte, MaxObjectSize)
			var err error
			for i := 0; i < 256 && err == nil; i++ { // 1 MiB: drains the 4 KiB pool
				_, err = s.Put(buf)
			}
			switch {
			case short && !errors.Is(err, ErrNoMem):
				t.Fatalf("memory short, refiller stalled: %v, want ErrNoMem", err)
			case !short && err != nil:
				t.Fatalf("memory plentiful, refiller only slow: %v", err)
			}
			if s.Stats().ReserveWaits == 0 {
				t.Fatal("no Put waited for the refiller: the test proves nothing")
			}
		})
	}
}
