//go:build linux

package swapsafe

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// setAllOther puts every thread back in SCHED_OTHER so later tests in this
// binary run as usual.
func setAllOther(t *testing.T) {
	if _, err := setAllThreads(unix.SCHED_NORMAL, 0, -1); err != nil {
		t.Error(err)
	}
}

func checkAllRR(t *testing.T, when string) {
	t.Helper()
	if bad, n := policiesBut(t, -1, unix.SCHED_RR); len(bad) > 0 {
		t.Errorf("%s: %d of %d threads not SCHED_RR: %v", when, len(bad), n, bad)
	} else {
		t.Logf("%s: all %d threads SCHED_RR", when, n)
	}
}

func TestRealtimeAllThreads(t *testing.T) {
	defer setAllOther(t)
	// Threads that exist before Apply must be reached too.
	n0, stop := existingThreads(t)
	defer stop()

	skipUnprivileged(t, Apply(Options{Realtime: RealtimeAlways}))
	checkAllRR(t, "after Apply")

	// Threads the runtime starts later inherit the policy from the thread
	// that clones them.
	defer moreThreads(t, n0)()
	checkAllRR(t, "after new threads")
	// From a new thread's own view, too.
	done := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		pol, _, _ := unix.RawSyscall(unix.SYS_SCHED_GETSCHEDULER, 0, 0, 0)
		done <- int(pol)
	}()
	if pol := <-done; pol != unix.SCHED_RR {
		t.Errorf("a new locked thread sees policy %d, want SCHED_RR (%d)", pol, unix.SCHED_RR)
	}
}
