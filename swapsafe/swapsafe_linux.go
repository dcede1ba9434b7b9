//go:build linux

package swapsafe

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Apply takes the steps opts asks for and returns one error per step that
// failed, nil when all succeeded. It never stops at a failure: each step is
// independent, and a server that cannot lock memory should still set its
// thread flags. Call it early in the serving command, before the device is
// attached, so threads the runtime starts later inherit the flags.
func Apply(opts Options) []error {
	var errs []error
	if opts.IOFlusher {
		if err := applyIOFlusher(); err != nil {
			errs = append(errs, err)
		}
	}
	if opts.Mlock {
		if err := applyMlock(); err != nil {
			errs = append(errs, err)
		}
	}
	if opts.OOMScoreAdj {
		if err := applyOOMScoreAdj(); err != nil {
			errs = append(errs, err)
		}
	}
	switch opts.Realtime {
	case RealtimeAlways:
		if err := applyRealtime(); err != nil {
			errs = append(errs, err)
		}
	case RealtimeAuto:
		if err := startRealtimeWatch(opts); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// applyIOFlusher sets PR_SET_IO_FLUSHER on every OS thread.
//
// prctl acts on the calling thread only. syscall.AllThreadsSyscall stops the
// world and runs the call on every thread the runtime knows, including idle
// ones and ones blocked in system calls (they are signalled). Threads made
// later are cloned from one of those, and the kernel copies PF_MEMALLOC_NOIO
// and PF_LOCAL_THROTTLE to the child, so they are covered too. A binary
// linked with cgo may have threads the runtime does not know; there
// AllThreadsSyscall refuses (ENOTSUP), and a C constructor (early_cgo.go)
// sets the flag on the first thread before any other exists, for `serve`
// command lines. Flagging only some threads would look safe without being
// so, so either way the result is checked against /proc/self/task.
func applyIOFlusher() error {
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_IO_FLUSHER, 1, 0)
	if errno == syscall.ENOTSUP {
		tried, err := earlyIOFlusher()
		switch {
		case !tried:
			return fmt.Errorf("swapsafe: PR_SET_IO_FLUSHER: this binary uses cgo and the flag was not set at start-up (only for `serve`), so it cannot be set on every thread")
		case err != nil:
			errno = err.(syscall.Errno)
		default:
			errno = 0
		}
	}
	switch errno {
	case 0:
	case syscall.ENOTSUP:
		return fmt.Errorf("swapsafe: PR_SET_IO_FLUSHER: this binary uses cgo, so it cannot be set on every thread (build with CGO_ENABLED=0)")
	case syscall.EPERM:
		return fmt.Errorf("swapsafe: PR_SET_IO_FLUSHER: %w (needs CAP_SYS_RESOURCE)", errno)
	case syscall.EINVAL:
		return fmt.Errorf("swapsafe: PR_SET_IO_FLUSHER: %w (needs Linux 5.6 or later)", errno)
	default:
		return fmt.Errorf("swapsafe: PR_SET_IO_FLUSHER: %w", errno)
	}
	tf, err := ReadThreadFlags()
	if err != nil {
		return fmt.Errorf("swapsafe: PR_SET_IO_FLUSHER set, but cannot verify: %w", err)
	}
	if miss := tf.Missing(PFIOFlusher); len(miss) > 0 {
		return fmt.Errorf("swapsafe: PR_SET_IO_FLUSHER missing on %d of %d threads (tids %v)", len(miss), len(tf), miss)
	}
	return nil
}

// applyMlock locks the process's memory. Without MCL_ONFAULT, MCL_FUTURE
// would populate every new mapping in full, including the Go runtime's arena
// reservations; with it only touched pages are locked (Linux 4.4+).
//
// MCL_ONFAULT alone leaves the binary's code that has not run yet on disk:
// in the guest VM (hack/guest-swap.sh) the server, serving its first swap
// writes with memory exhausted, took a page fault on its own text
// (filemap_fault) and spun in direct reclaim for good. So the file-backed
// mappings (text, rodata, data of the binary and any shared library) are
// then locked with mlock, which reads them in now.
func applyMlock() error {
	err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT)
	switch {
	case err == nil:
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.ENOMEM):
		return fmt.Errorf("swapsafe: mlockall: %w (needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK)", err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("swapsafe: mlockall: %w (MCL_ONFAULT needs Linux 4.4 or later)", err)
	default:
		return fmt.Errorf("swapsafe: mlockall: %w", err)
	}
	if err := populateFileMappings(); err != nil {
		return fmt.Errorf("swapsafe: memory locked on fault, but the binary's pages are not all in: %w", err)
	}
	return nil
}

// populateFileMappings mlocks (and so reads in) every file-backed mapping
// listed in /proc/self/maps.
func populateFileMappings() error {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// "start-end perms offset dev inode path"; a path starting with
		// "/" is a file ([heap], [stack], [vdso] and anonymous ones are not).
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], "/") {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MLOCK, uintptr(start), uintptr(end-start), 0); errno != 0 {
			return fmt.Errorf("mlock %s %s: %w", f[0], f[5], errno)
		}
	}
	return nil
}

// applyOOMScoreAdj makes the OOM killer skip this process.
func applyOOMScoreAdj() error {
	err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000\n"), 0)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("swapsafe: oom_score_adj -1000: %w (needs CAP_SYS_RESOURCE)", err)
		}
		return fmt.Errorf("swapsafe: oom_score_adj -1000: %w", err)
	}
	return nil
}

// ReadThreadFlags reads the kernel flags word of every thread of this process
// from /proc/self/task/*/stat (field 9). Threads that exit while it reads are
// left out.
func ReadThreadFlags() (ThreadFlags, error) {
	// Keep this goroutine's thread alive and in the listing while we read.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tids, err := threadIDs()
	if err != nil {
		return nil, err
	}
	tf := make(ThreadFlags, len(tids))
	for _, tid := range tids {
		b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/stat")
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			continue
		}
		if err != nil {
			return nil, err
		}
		f, err := parseStatFlags(string(b))
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", tid, err)
		}
		tf[tid] = f
	}
	if len(tf) == 0 {
		return nil, errors.New("no threads listed in /proc/self/task")
	}
	return tf, nil
}

// threadIDs lists the thread ids in /proc/self/task.
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
		return nil, errors.New("no threads listed in /proc/self/task")
	}
	return tids, nil
}

// parseStatFlags returns field 9 (flags) of a stat line. The command name in
// field 2 may hold spaces and parentheses, so count fields from the last ')'.
func parseStatFlags(line string) (uint64, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, errors.New("malformed stat line")
	}
	// After ")": state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
	fields := strings.Fields(line[i+1:])
	if len(fields) < 7 {
		return 0, errors.New("short stat line")
	}
	return strconv.ParseUint(fields[6], 10, 64)
}
