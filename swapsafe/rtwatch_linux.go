//go:build linux

package swapsafe

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/hostmem"
)

// rtWatch runs RealtimeAuto: the server's threads stay in SCHED_OTHER while
// the machine has memory to spare and go SCHED_RR, every one of them, once
// free memory falls below a threshold, well before the min watermark where
// the real-time reserve matters. They go back after free memory has stayed
// above twice the threshold for a while.
//
// Why not SCHED_RR for good: a real-time thread costs each request a
// context switch or two. A client sends the 28-byte request header and the
// payload in two sends (libnbd and the kernel's nbd driver both do), and on
// a unix socket each send wakes the reader. A real-time reader woken by the
// header preempts the client on its CPU before the payload is out, reads 28
// bytes and sleeps again. On the 2-CPU bench host that made a QD1 4 KiB
// write's p50 40 µs instead of 23 (hack/bench.sh, README "Performance").
//
// The watcher itself is a locked OS thread in SCHED_RR for good, so it is
// scheduled at once even while the machine is busy reclaiming. It samples
// free memory with sysinfo(2) every poll, which allocates nothing, and on a
// switch sets the threads it saw last before it walks /proc/self/task
// (which does allocate) for new ones. It carries SCHED_RESET_ON_FORK while
// the others are in SCHED_OTHER, so a thread the runtime happens to clone
// from it does not start real-time; while they are real-time it re-walks
// the thread list every recheck to catch any thread cloned meanwhile.
type rtWatch struct {
	below   uint64                 // free bytes under which the threads go real-time
	free    func() (uint64, error) // free memory now
	poll    time.Duration          // how often free memory is sampled
	hold    time.Duration          // how long free must stay above 2*below to switch back
	recheck time.Duration          // while real-time, how often new threads are looked for
	events  chan rtEvent
	on      atomic.Bool
	tids    []int // the threads the last walk saw
	self    int
	stop    chan struct{}
	done    chan struct{}
}

type rtEvent struct {
	on   bool
	free uint64
}

// The process's one watcher, so a second Apply does not start another.
var (
	watchMu sync.Mutex
	watch   *rtWatch
)

// DefaultRealtimeBelow is the free memory under which RealtimeAuto goes
// real-time: a sixteenth of RAM, and at least 16 times vm.min_free_kbytes.
// The margin is wide on purpose: the switch must be done before a server
// thread enters the allocator's slow path, which reads the thread's policy
// once on entry, and memory can fall fast. 1.5 GiB on a 24 GiB host, 46 MiB
// in the 512 MiB guest of hack/guest-swap.sh.
func DefaultRealtimeBelow() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 256 << 20
	}
	total := uint64(si.Totalram) * uint64(si.Unit)
	below := total / 16
	if kb, err := hostmem.MinFreeKiB(); err == nil {
		below = max(below, 16*kb<<10)
	}
	return min(below, total/2)
}

// sysFree is free memory from sysinfo(2): MemFree, without page cache. Page
// cache can be dropped without I/O, but the threshold has to hold even when
// what is left to reclaim is anonymous memory that only swap (us) can take.
func sysFree() (uint64, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, err
	}
	return uint64(si.Freeram) * uint64(si.Unit), nil
}

// startRealtimeWatch starts the process's watcher for opts (RealtimeAuto).
func startRealtimeWatch(opts Options) error {
	watchMu.Lock()
	defer watchMu.Unlock()
	if watch != nil {
		return nil
	}
	below := opts.RealtimeBelow
	if below == 0 {
		below = DefaultRealtimeBelow()
	}
	w := newRTWatch(below, sysFree)
	if err := w.start(opts.OnRealtime); err != nil {
		return fmt.Errorf("swapsafe: SCHED_RR priority %d for the memory watcher: %w", RealtimePriority, permHint(err))
	}
	watch = w
	return nil
}

func newRTWatch(below uint64, free func() (uint64, error)) *rtWatch {
	return &rtWatch{below: below, free: free, poll: 10 * time.Millisecond, hold: 30 * time.Second,
		recheck: time.Second, events: make(chan rtEvent, 16), stop: make(chan struct{}), done: make(chan struct{})}
}

// start runs the watcher and returns once its thread is real-time (or could
// not be made so). report, if not nil, hears each switch.
func (w *rtWatch) start(report func(on bool, free uint64)) error {
	ready := make(chan error, 1)
	go w.run(ready)
	if err := <-ready; err != nil {
		return err
	}
	if report != nil {
		go func() {
			for ev := range w.events {
				report(ev.on, ev.free)
			}
		}()
	}
	return nil
}

// close stops the watcher and leaves every thread in SCHED_OTHER.
func (w *rtWatch) close() error {
	close(w.stop)
	<-w.done
	close(w.events)
	_, err := setAllThreads(unix.SCHED_NORMAL, 0, -1)
	return err
}

func (w *rtWatch) run(ready chan<- error) {
	// Never unlocked: the thread carries our policy and ends with us.
	runtime.LockOSThread()
	defer close(w.done)
	w.self = unix.Gettid()
	if err := setThread(w.self, unix.SCHED_RR|unix.SCHED_RESET_ON_FORK, RealtimePriority); err != nil {
		ready <- err
		return
	}
	ready <- nil
	var above, sinceWalk time.Duration
	ts := unix.NsecToTimespec(w.poll.Nanoseconds())
	for {
		if free, err := w.free(); err == nil {
			switch {
			case free < w.below:
				above = 0
				if !w.on.Load() {
					w.switchTo(true, free)
					sinceWalk = 0
				}
			case free > 2*w.below:
				above += w.poll
				if w.on.Load() && above >= w.hold {
					w.switchTo(false, free)
				}
			default:
				above = 0
			}
		}
		if w.on.Load() {
			if sinceWalk += w.poll; sinceWalk >= w.recheck {
				w.walk(true)
				sinceWalk = 0
			}
		}
		select {
		case <-w.stop:
			return
		default:
		}
		// nanosleep, not a Go timer: the kernel wakes this real-time
		// thread itself, with no help from the runtime's other threads.
		_ = unix.Nanosleep(&ts, nil)
	}
}

// switchTo puts every thread in SCHED_RR (on) or SCHED_OTHER; the watcher
// stays real-time either way.
func (w *rtWatch) switchTo(on bool, free uint64) {
	self := unix.SCHED_RR | unix.SCHED_RESET_ON_FORK
	if on {
		self = unix.SCHED_RR
	}
	_ = setThread(w.self, self, RealtimePriority)
	policy, prio := threadPolicy(on)
	for _, tid := range w.tids { // no allocation: the threads we know of first
		if tid != w.self {
			_ = setThread(tid, policy, prio)
		}
	}
	w.on.Store(on)
	w.walk(on)
	select {
	case w.events <- rtEvent{on, free}:
	default: // a stuck logger must not hold the watcher
	}
}

// walk sets every thread but the watcher to the state's policy and
// remembers the threads it saw.
func (w *rtWatch) walk(on bool) {
	policy, prio := threadPolicy(on)
	if tids, err := setAllThreads(policy, prio, w.self); err == nil {
		w.tids = tids
	}
}

// threadPolicy is the policy and priority of the server's threads while
// real-time (on) or not.
func threadPolicy(on bool) (int, int32) {
	if on {
		return unix.SCHED_RR, RealtimePriority
	}
	return unix.SCHED_NORMAL, 0
}

// setThread sets one thread's policy (which may carry SCHED_RESET_ON_FORK).
func setThread(tid, policy int, prio int32) error {
	param := struct{ prio int32 }{prio}
	_, _, errno := unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), uintptr(policy), uintptr(unsafe.Pointer(&param)))
	if errno != 0 {
		return errno
	}
	return nil
}

func permHint(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w (needs CAP_SYS_NICE, or RLIMIT_RTPRIO and an RT-enabled cgroup)", unix.EPERM)
	}
	return err
}
