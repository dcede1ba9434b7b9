//go:build linux

package swapsafe

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// RealtimePriority is the SCHED_RR priority the server's threads get: the
// lowest real-time one. Any real-time priority buys the allocator's reserve
// (see applyRealtime); the lowest leaves every other real-time task ahead of
// us.
const RealtimePriority = 1

// applyRealtime puts every thread of the process in SCHED_RR.
//
// Why: when the kernel swaps through us, memory is at its min watermark and
// every allocation the server still makes (the reply's socket buffer, the
// store's refiller faulting in spans) competes with the very workload that
// exhausted memory, and under PR_SET_IO_FLUSHER it cannot reclaim by
// swapping. The page allocator lets a real-time task in the slow path go a
// quarter below the min watermark (gfp_to_alloc_flags: rt_task -> ALLOC_HARDER
// in 6.1, ALLOC_MIN_RESERVE later), a reserve ordinary tasks never touch: the
// server's small allocations succeed and its replies complete the writes
// that free memory. In the guest (hack/guest-swap.sh) the server stalled
// without it and serves 1.5x RAM of swap with it. SCHED_RR, not FIFO, so the
// server's threads share a CPU in time slices; the kernel's RT throttling
// (sched_rt_runtime_us) still keeps 5% for everyone else.
//
// sched_setscheduler acts on one thread id, so each thread in /proc/self/task
// is set; threads cloned later inherit the policy from the thread that
// clones them. A thread cloned from one not yet set while we walk the list is
// caught by walking again until a pass changes nothing.
func applyRealtime() error {
	if _, err := setAllThreads(unix.SCHED_RR, RealtimePriority, -1); err != nil {
		return fmt.Errorf("swapsafe: SCHED_RR priority %d: %w", RealtimePriority, permHint(err))
	}
	return nil
}

// setAllThreads puts every thread of the process but except in policy at
// prio, walking /proc/self/task again until a pass finds nothing left to
// change, and returns the thread ids of that last pass.
func setAllThreads(policy int, prio int32, except int) ([]int, error) {
	for pass := 0; pass < 10; pass++ {
		pols, err := ThreadPolicies()
		if err != nil {
			return nil, err
		}
		changed := 0
		tids := make([]int, 0, len(pols))
		for tid, pol := range pols {
			tids = append(tids, tid)
			if pol == policy || tid == except {
				continue
			}
			switch err := setThread(tid, policy, prio); err {
			case nil:
				changed++
			case unix.ESRCH: // exited meanwhile
			case unix.EPERM:
				return nil, err
			default:
				return nil, fmt.Errorf("thread %d: %w", tid, err)
			}
		}
		if changed == 0 {
			return tids, nil
		}
	}
	return nil, errors.New("threads kept appearing faster than they could be set")
}

// ThreadPolicies maps each thread id of this process to its scheduling
// policy (unix.SCHED_NORMAL, unix.SCHED_RR, ...).
func ThreadPolicies() (map[int]int, error) {
	tids, err := threadIDs()
	if err != nil {
		return nil, err
	}
	out := make(map[int]int, len(tids))
	for _, tid := range tids {
		pol, _, errno := unix.RawSyscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
		if errno == unix.ESRCH {
			continue
		}
		if errno != 0 {
			return nil, fmt.Errorf("sched_getscheduler(%d): %w", tid, errno)
		}
		out[tid] = int(pol) &^ unix.SCHED_RESET_ON_FORK
	}
	return out, nil
}
