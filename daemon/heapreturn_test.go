package daemon

import (
	"runtime"
	"runtime/metrics"
	"testing"
)

// TestHeapReturnDue: the heap goes back once store memory has fallen by
// heapReturnDrop from its peak and then held still for a poll; not while it
// is still falling or changing, not for small drops, and once per drop.
func TestHeapReturnDue(t *testing.T) {
	var used int64
	h := &heapReturn{used: func() int64 { return used }}
	steps := []struct {
		used int64
		due  bool
	}{
		{0, false},
		{100 << 20, false}, // a fill
		{100 << 20, false}, // still, but nothing went
		{90 << 20, false},  // a small TRIM
		{90 << 20, false},
		{40 << 20, false}, // a big TRIM, still running
		{10 << 20, false},
		{10 << 20, true}, // over: give the heap back
		{10 << 20, false},
		{0, false}, // a further 10 MiB is not worth it
		{0, false},
		{50 << 20, false},
		{50 << 20, false},
		{5 << 20, false},
		{5 << 20, true},
		{5 << 20, false},
	}
	for i, s := range steps {
		used = s.used
		if got := h.due(); got != s.due {
			t.Fatalf("step %d (store %d MiB): due %v, want %v", i, s.used>>20, got, s.due)
		}
	}
}

// TestHeapReturnAfterConnEnd: a connection's end gives the heap back at the
// next poll where store memory holds still, once.
func TestHeapReturnAfterConnEnd(t *testing.T) {
	used := int64(10 << 20)
	h := &heapReturn{used: func() int64 { return used }}
	h.last = used
	if h.due() {
		t.Fatal("due with nothing ended")
	}
	h.connEnded.Store(true)
	used = 20 << 20 // the other connection still writing
	if h.due() {
		t.Fatal("due while store memory changes")
	}
	if !h.due() {
		t.Fatal("not due after a connection ended and store memory held still")
	}
	if h.due() {
		t.Fatal("due twice for one connection's end")
	}
}

// heapFree is the heap's free memory still resident, and what it gave back.
func heapFree() (free, released uint64) {
	m := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(m)
	return m[0].Value.Uint64(), m[1].Value.Uint64()
}

// TestReturnHeapKeepsWarm: after a burst of garbage, returnHeap gives the
// heap's free pages back to the OS but keeps heapWarm of them resident, as
// prepare left the heap.
func TestReturnHeapKeepsWarm(t *testing.T) {
	// As prepare leaves it: with the ballast live, the background
	// scavenger does not take the warm pages back on its own between
	// returnHeap and the reading below (it did, now and then, without).
	if ballast == nil {
		ballast = make([]byte, ballastBytes)
		defer func() { ballast = nil }()
	}
	garbage := touchHeap(96 << 20)
	runtime.KeepAlive(garbage)
	garbage = nil
	runtime.GC()
	runtime.GC()
	free0, rel0 := heapFree()
	if free0 < heapWarm+32<<20 {
		t.Skipf("only %d MiB of free heap resident after dropping 96 MiB: the scavenger was quicker", free0>>20)
	}
	returnHeap(true)
	free, rel := heapFree()
	t.Logf("free heap resident %d -> %d MiB, released %d -> %d MiB", free0>>20, free>>20, rel0>>20, rel>>20)
	if free > heapWarm+4<<20 || free < heapWarm*3/4 {
		t.Fatalf("free heap resident %d MiB after returnHeap, want about heapWarm (%d MiB)", free>>20, heapWarm>>20)
	}
	if rel < rel0+32<<20 {
		t.Fatalf("released heap %d -> %d MiB: the garbage was not given back", rel0>>20, rel>>20)
	}
}
