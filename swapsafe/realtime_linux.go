//go:build linux

package swapsafe

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"

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
	param := struct{ prio int32 }{RealtimePriority}
	for pass := 0; pass < 10; pass++ {
		tids, err := threadIDs()
		if err != nil {
			return fmt.Errorf("swapsafe: SCHED_RR: %w", err)
		}
		changed := 0
		for _, tid := range tids {
			pol, _, errno := unix.RawSyscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
			if errno == unix.ESRCH {
				continue // exited meanwhile
			}
			if errno == 0 && int(pol) == unix.SCHED_RR {
				continue
			}
			_, _, errno = unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), unix.SCHED_RR, uintptr(unsafe.Pointer(&param)))
			switch errno {
			case 0:
				changed++
			case unix.ESRCH:
			case unix.EPERM:
				return fmt.Errorf("swapsafe: SCHED_RR priority %d: %w (needs CAP_SYS_NICE, or RLIMIT_RTPRIO and an RT-enabled cgroup)", RealtimePriority, errno)
			default:
				return fmt.Errorf("swapsafe: SCHED_RR priority %d on thread %d: %w", RealtimePriority, tid, errno)
			}
		}
		if changed == 0 {
			return nil
		}
	}
	return errors.New("swapsafe: SCHED_RR: threads kept appearing faster than they could be set")
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
		out[tid] = int(pol)
	}
	return out, nil
}

// threadIDs lists /proc/self/task.
func threadIDs() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	if len(tids) == 0 {
		return nil, syscall.ESRCH
	}
	return tids, nil
}
