package pagestore

import (
	"testing"
	"time"
)

// boost makes p's watermarks as high as running dry repeatedly makes them,
// and fills its reserve to the new high watermark.
func boost(t *testing.T, s *Store, p *spanPool) {
	t.Helper()
	for range 4 {
		p.dry.Store(true)
		s.refillAll(false)
	}
	if p.high <= p.baseHigh {
		t.Fatalf("pool of %d-byte spans not boosted: high %d, base %d", p.spanBytes, p.high, p.baseHigh)
	}
}

// baseReserve is what every pool's reserve holds at its base high watermark.
func baseReserve(s *Store) (bytes int64, pages int) {
	for _, p := range s.pools {
		if p != nil {
			bytes += int64(p.baseHigh) * int64(p.spanBytes)
			pages += p.baseHigh * int(p.spanBytes/PageSize)
		}
	}
	return bytes, pages
}

// TestReserveShrinksWhenEmpty: after a fill that boosted the reserve, freeing
// every object (TRIM of the whole device) brings the reserve back to its
// base watermarks by itself, the arenas hold no resident page beyond that
// base reserve, and the classes' span tables shrink back: the store holds
// what a new one does.
func TestReserveShrinksWhenEmpty(t *testing.T) {
	s := newStore(t, Options{Reserve: true})
	fresh := s.Stats()
	baseBytes, basePages := baseReserve(s)
	if fresh.ReserveBytes != baseBytes {
		t.Fatalf("new store: reserve %d, base %d", fresh.ReserveBytes, baseBytes)
	}
	m := model{}
	var hs []Handle
	for i := range 30000 {
		hs = append(hs, put(t, s, m, uint64(i), []int{700, 2100, 3300}[i%3]))
	}
	for _, size := range []int{700, 2100, 3300} {
		boost(t, s, s.classFor(size).pool)
	}
	if st := s.Stats(); st.ReserveBytes <= baseBytes {
		t.Fatalf("reserve %d after boosting, base %d", st.ReserveBytes, baseBytes)
	}
	for _, h := range hs {
		s.Free(h)
	}
	// The last Free wakes the refiller, which shrinks the reserve.
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().ReserveBytes != baseBytes || s.highTotal.Load() != baseBytes {
		if time.Now().After(deadline) {
			t.Fatalf("reserve %d bytes, high watermarks %d, 10s after the store emptied: want base %d",
				s.Stats().ReserveBytes, s.highTotal.Load(), baseBytes)
		}
		time.Sleep(time.Millisecond)
	}
	st := s.Stats()
	if st.MemUsed != 0 || st.Objects != 0 {
		t.Fatalf("MemUsed %d, %d objects after freeing everything", st.MemUsed, st.Objects)
	}
	s.refillMu.Lock() // the refiller is done: nothing moves while we look
	for _, p := range s.pools {
		if p != nil && (p.high != p.baseHigh || p.low != p.baseHigh/2) {
			t.Errorf("pool of %d-byte spans: watermarks %d/%d, base %d", p.spanBytes, p.low, p.high, p.baseHigh)
		}
	}
	if res, _ := residentPages(t, s); res > basePages {
		t.Fatalf("%d arena pages resident after freeing everything, base reserve is %d", res, basePages)
	}
	for i := range s.classes {
		if c := &s.classes[i]; cap(c.spans) > 16 || cap(c.freeIDs) > 16 {
			t.Fatalf("class %d: span table cap %d, free ids cap %d after emptying", c.size, cap(c.spans), cap(c.freeIDs))
		}
	}
	if meta, meta0 := st.MetadataBytes-st.HandleTableBytes, fresh.MetadataBytes-fresh.HandleTableBytes; meta > meta0+16<<10 {
		t.Fatalf("Go-heap bookkeeping %d bytes after emptying, %d when new", meta, meta0)
	}
	s.refillMu.Unlock()
	// And the store still works, from the smaller reserve.
	m = model{}
	for i := range 3000 {
		put(t, s, m, uint64(i), 2100)
	}
	checkAll(t, s, m)
}

// TestReserveDecaysWhenIdle: a boosted pool that hands out no span for a
// decay interval goes back to its base watermarks and gives its extra
// reserve back; one still taking spans keeps its boost.
func TestReserveDecaysWhenIdle(t *testing.T) {
	s := newStore(t, Options{Reserve: true})
	s.refillHeld.Store(true) // the test plays the refiller's ticks
	busy, idle := s.classFor(2100).pool, s.classFor(700).pool
	if busy == idle {
		t.Fatal("the two sizes share a pool")
	}
	boost(t, s, busy)
	boost(t, s, idle)
	s.shrinkReserve(false) // a first tick: both handed out nothing yet
	boost(t, s, busy)
	boost(t, s, idle)
	m := model{}
	c := s.classFor(2100)
	for i := range 3 * int(c.objs) { // three spans from busy's reserve
		put(t, s, m, uint64(i), 2100)
	}
	busyHigh := busy.high
	s.shrinkReserve(false)
	if busy.high != busyHigh {
		t.Fatalf("busy pool shrank: high %d, was %d", busy.high, busyHigh)
	}
	if idle.high != idle.baseHigh || reservedSpans(idle) != idle.baseHigh {
		t.Fatalf("idle pool: high %d, %d reserved, want base %d", idle.high, reservedSpans(idle), idle.baseHigh)
	}
	s.shrinkReserve(false) // busy was idle for this tick
	if busy.high != busy.baseHigh || reservedSpans(busy) > busy.baseHigh {
		t.Fatalf("busy pool after an idle tick: high %d, %d reserved, want base %d", busy.high, reservedSpans(busy), busy.baseHigh)
	}
	baseBytes, _ := baseReserve(s)
	if got := s.highTotal.Load(); got != baseBytes {
		t.Fatalf("high watermarks total %d, base %d", got, baseBytes)
	}
	checkAll(t, s, m)
	checkStats(t, s, m)
}
