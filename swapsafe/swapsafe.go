// Package swapsafe prepares a process that serves a swap device to keep
// working when the machine is out of memory (docs/guest.md: what a guest
// out of memory showed without it).
//
// A swap device's server is part of the kernel's reclaim path: when memory is
// short the kernel writes pages out through it, so the server must not wait
// on that same reclaim. Linux offers three tools for such daemons, and Apply
// sets each one that Options asks for:
//
//   - PR_SET_IO_FLUSHER (Linux 5.6+, CAP_SYS_RESOURCE): the thread's own
//     allocations never recurse into I/O (PF_MEMALLOC_NOIO) and it is not
//     throttled by dirty-page writeback of the device it serves
//     (PF_LOCAL_THROTTLE). The flag is per thread, so it must reach every OS
//     thread of the Go runtime; see applyIOFlusher.
//   - mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT): the server's own pages are
//     never swapped out to itself. MCL_ONFAULT locks pages when they are first
//     touched, so the Go runtime's large address reservations are not pinned.
//   - oom_score_adj -1000: the OOM killer never picks the server, whose death
//     would lose every swapped page at once.
//   - SCHED_RR (CAP_SYS_NICE): a real-time task's allocations may go a
//     quarter below the min watermark, a reserve the workload that exhausted
//     memory cannot touch, so the server's remaining kernel allocations (reply
//     socket buffers, the store's refiller) succeed while it is the way out
//     of the shortage. See applyRealtime. By default (RealtimeAuto) the
//     threads go real-time only while free memory is short: see rtWatch.
//
// Each step fails on its own (no privilege, old kernel); Apply returns one
// error per failed step and the caller logs each as a warning and goes on.
package swapsafe

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Options selects the steps Apply takes. The zero value takes none.
type Options struct {
	// IOFlusher sets PR_SET_IO_FLUSHER on every OS thread of the process.
	IOFlusher bool
	// Mlock locks current and future memory with MCL_ONFAULT.
	Mlock bool
	// OOMScoreAdj writes -1000 to /proc/self/oom_score_adj.
	OOMScoreAdj bool
	// Realtime says when every thread runs in SCHED_RR at RealtimePriority.
	Realtime RealtimeMode
	// RealtimeBelow is the free memory, in bytes, under which RealtimeAuto
	// puts the threads in SCHED_RR; 0 means DefaultRealtimeBelow.
	RealtimeBelow uint64
	// OnRealtime, if set, hears each switch RealtimeAuto makes, with the
	// free memory that caused it. It runs on a goroutine of its own, so a
	// slow logger never holds up the watcher.
	OnRealtime func(on bool, free uint64)
}

// RealtimeMode says when the server's threads run in SCHED_RR.
type RealtimeMode int

const (
	// RealtimeNever leaves every thread's policy alone.
	RealtimeNever RealtimeMode = iota
	// RealtimeAuto runs the threads in SCHED_RR while free memory is below
	// Options.RealtimeBelow, and in SCHED_OTHER otherwise: the reserve is
	// there when memory is short, and with memory to spare the server does
	// not pay what real-time wakeups cost a request (an RT reader woken by
	// the request header preempts the client before it sends the payload).
	RealtimeAuto
	// RealtimeAlways puts every thread in SCHED_RR for good.
	RealtimeAlways
)

var realtimeNames = [...]string{RealtimeNever: "never", RealtimeAuto: "auto", RealtimeAlways: "always"}

func (m RealtimeMode) String() string {
	if m < 0 || int(m) >= len(realtimeNames) {
		return fmt.Sprintf("RealtimeMode(%d)", int(m))
	}
	return realtimeNames[m]
}

// ParseRealtimeMode reads "never", "auto" or "always".
func ParseRealtimeMode(s string) (RealtimeMode, error) {
	for m, name := range realtimeNames {
		if s == name {
			return RealtimeMode(m), nil
		}
	}
	return 0, fmt.Errorf("unknown realtime mode %q (want never, auto or always)", s)
}

// Thread flag bits from include/linux/sched.h, as shown in field 9 of
// /proc/<pid>/task/<tid>/stat. PR_SET_IO_FLUSHER sets both.
const (
	PFMemallocNoIO  = 0x00080000
	PFLocalThrottle = 0x00100000
	// PFIOFlusher is the pair PR_SET_IO_FLUSHER sets.
	PFIOFlusher = PFMemallocNoIO | PFLocalThrottle
)

// ErrUnsupported is returned (wrapped) by every step on systems other than
// Linux, where none of these tools exist.
var ErrUnsupported = errors.New("swapsafe: not supported on this OS")

// ThreadFlags maps an OS thread id of this process to its kernel flags word.
type ThreadFlags map[int]uint64

// Missing returns the thread ids whose flags lack any bit of want.
func (tf ThreadFlags) Missing(want uint64) []int {
	var out []int
	for tid, f := range tf {
		if f&want != want {
			out = append(out, tid)
		}
	}
	return out
}

// Describe renders tf for logs: each thread id with its flags in hex, sorted.
func (tf ThreadFlags) Describe() string {
	tids := make([]int, 0, len(tf))
	for tid := range tf {
		tids = append(tids, tid)
	}
	sort.Ints(tids)
	var b strings.Builder
	for i, tid := range tids {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%#x", tid, tf[tid])
	}
	return b.String()
}

// Prefault touches every page of b so it is backed by memory now. A swap
// device's server must not take a page fault on fresh memory while serving
// a request: the kernel may be out of memory and waiting for that very
// request to swap pages out. Go's make() of a large buffer returns fresh OS
// pages without touching them, so the first read(2) into it would fault
// inside the kernel's copy. The request path's buffers are therefore touched
// when they are made, while memory is still plentiful; under mlockall they
// then stay put.
func Prefault(b []byte) {
	for i := 0; i < len(b); i += 4096 {
		b[i] = 0
	}
	if len(b) > 0 {
		b[len(b)-1] = 0
	}
}
