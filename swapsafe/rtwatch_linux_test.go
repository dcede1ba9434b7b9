//go:build linux

package swapsafe

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// policiesBut returns the threads other than except whose policy is not
// want, with the total.
func policiesBut(t *testing.T, except, want int) ([]int, int) {
	t.Helper()
	pols, err := ThreadPolicies()
	if err != nil {
		t.Fatal(err)
	}
	var bad []int
	for tid, pol := range pols {
		if tid != except && pol != want {
			bad = append(bad, tid)
		}
	}
	return bad, len(pols)
}

// waitPolicies waits until every thread but except has policy want.
func waitPolicies(t *testing.T, except, want int, when string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		bad, n := policiesBut(t, except, want)
		if len(bad) == 0 {
			t.Logf("%s: %d threads, all in policy %d (but %d)", when, n, want, except)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d threads not in policy %d: %v", when, len(bad), n, want, bad)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRealtimeAutoFollowsFreeMemory drives the watcher with a fake free
// memory figure: plenty leaves every thread in SCHED_OTHER, short puts them
// all in SCHED_RR (threads started meanwhile too), and plenty again for
// the hold time brings them back, while the watcher itself stays real-time.
func TestRealtimeAutoFollowsFreeMemory(t *testing.T) {
	defer setAllOther(t)
	n0, stopExisting := existingThreads(t)
	defer stopExisting()

	var free atomic.Uint64
	free.Store(1000)
	w := newRTWatch(100, func() (uint64, error) { return free.Load(), nil })
	w.poll, w.hold, w.recheck = time.Millisecond, 100*time.Millisecond, 20*time.Millisecond
	var switches atomic.Int32
	if err := w.start(func(on bool, f uint64) { switches.Add(1) }); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("no SCHED_RR here: %v", err)
		}
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			w.close()
		}
	}()
	if pol, _, _ := unix.RawSyscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(w.self), 0, 0); int(pol) != unix.SCHED_RR|unix.SCHED_RESET_ON_FORK {
		t.Errorf("watcher thread policy %#x, want SCHED_RR|SCHED_RESET_ON_FORK", pol)
	}
	time.Sleep(50 * time.Millisecond)
	if bad, n := policiesBut(t, w.self, unix.SCHED_NORMAL); len(bad) > 0 || w.on.Load() {
		t.Fatalf("memory plentiful: %d of %d threads real-time (%v), on=%v", len(bad), n, bad, w.on.Load())
	}

	free.Store(50)
	waitPolicies(t, -1, unix.SCHED_RR, "memory short")
	if !w.on.Load() {
		t.Error("threads real-time but the watcher does not say so")
	}
	// Threads the runtime starts while memory is short become real-time
	// too, whichever thread clones them (the recheck walk catches those
	// cloned from the watcher, which resets its children).
	defer moreThreads(t, n0)()
	waitPolicies(t, -1, unix.SCHED_RR, "new threads, memory short")

	// Between the threshold and twice it: stays real-time (hysteresis).
	free.Store(150)
	time.Sleep(3 * w.hold)
	if !w.on.Load() {
		t.Fatal("went back to SCHED_OTHER with free memory under twice the threshold")
	}
	free.Store(1000)
	waitPolicies(t, w.self, unix.SCHED_NORMAL, "memory back")
	if pol, _, _ := unix.RawSyscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(w.self), 0, 0); int(pol)&^unix.SCHED_RESET_ON_FORK != unix.SCHED_RR {
		t.Errorf("watcher thread left real-time (policy %#x)", pol)
	}
	// The report reaches us through a goroutine, after the threads have
	// switched: give it time rather than race it.
	for deadline := time.Now().Add(10 * time.Second); switches.Load() < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if got := switches.Load(); got != 2 {
		t.Errorf("reported %d switches, want 2 (on, off)", got)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	waitPolicies(t, -1, unix.SCHED_NORMAL, "after close")
}

func TestParseRealtimeMode(t *testing.T) {
	for _, m := range []RealtimeMode{RealtimeNever, RealtimeAuto, RealtimeAlways} {
		got, err := ParseRealtimeMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseRealtimeMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseRealtimeMode("sometimes"); err == nil {
		t.Error(`ParseRealtimeMode("sometimes") succeeded`)
	}
}

func TestDefaultRealtimeBelow(t *testing.T) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		t.Fatal(err)
	}
	total := uint64(si.Totalram) * uint64(si.Unit)
	got := DefaultRealtimeBelow()
	if got < total/16 || got > total/2 {
		t.Errorf("DefaultRealtimeBelow() = %d, want between RAM/16 (%d) and RAM/2", got, total/16)
	}
}
