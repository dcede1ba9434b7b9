package ublk

import (
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newTestRing skips where io_uring is off (io_uring_disabled, seccomp).
func newTestRing(t *testing.T, entries, flags uint32) *Ring {
	t.Helper()
	r, err := NewRing(entries, flags)
	if err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRingNops(t *testing.T) {
	// SINGLE_ISSUER: every io_uring_enter from the thread that made the
	// ring, else EEXIST ("file exists", seen when the goroutine moved).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := newTestRing(t, 8, setupCoopTaskrun|setupSingleIssuer|setupDeferTaskrun)
	seen := map[uint64]bool{}
	for round := 0; round < 5; round++ {
		for i := uint64(0); i < 8; i++ {
			if err := r.PrepareNop(uint64(round)*100 + i); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.PrepareNop(999); err != errRingFull {
			t.Fatalf("a ninth entry in an 8-entry ring: %v, want errRingFull", err)
		}
		for got := 0; got < 8; {
			if err := r.Submit(1); err != nil {
				t.Fatal(err)
			}
			for {
				ud, res, ok := r.Next()
				if !ok {
					break
				}
				if res != 0 || seen[ud] {
					t.Fatalf("completion %d: res %d, seen before %v", ud, res, seen[ud])
				}
				seen[ud] = true
				got++
			}
		}
	}
	if len(seen) != 40 {
		t.Fatalf("%d completions, want 40", len(seen))
	}
}

// TestRingPollWakes: a poll on an eventfd completes when another goroutine
// writes it, waking a thread blocked in Submit: how a queue is told to stop.
func TestRingPollWakes(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := newTestRing(t, 4, setupCoopTaskrun|setupSingleIssuer|setupDeferTaskrun)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := r.PreparePoll(efd, wakeTag); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}()
	start := time.Now()
	for {
		if err := r.Submit(1); err != nil {
			t.Fatal(err)
		}
		if ud, res, ok := r.Next(); ok {
			if ud != wakeTag || res&unix.POLLIN == 0 {
				t.Fatalf("completion %#x res %#x, want the poll with POLLIN", ud, res)
			}
			break
		}
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("the poll completed after %v, before the write", d)
	}
}

// TestRingSignals: Go's preemption signals (and others) interrupt a waiting
// io_uring_enter; Submit must go on waiting, not fail.
func TestRingSignals(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := newTestRing(t, 4, 0)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := r.PreparePoll(efd, 7); err != nil {
		t.Fatal(err)
	}
	tid := unix.Gettid()
	done := make(chan struct{})
	go func() {
		// SIGURG is what the runtime preempts with; it ignores stray ones.
		for i := 0; i < 20; i++ {
			unix.Tgkill(os.Getpid(), tid, syscall.SIGURG)
			time.Sleep(5 * time.Millisecond)
		}
		unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		close(done)
	}()
	for {
		if err := r.Submit(1); err != nil {
			t.Fatalf("Submit failed under signals: %v", err)
		}
		if ud, _, ok := r.Next(); ok {
			if ud != 7 {
				t.Fatalf("completion %d, want 7", ud)
			}
			break
		}
	}
	<-done
}

// TestSQELayout: a URING_CMD entry carries its op in the offset field and its
// payload at byte 48, where the kernel's io_uring_sqe_cmd reads it.
func TestSQELayout(t *testing.T) {
	r := newTestRing(t, 2, setupSQE128)
	payload := make([]byte, 32)
	for i := range payload {
		payload[i] = byte(i + 1)
	}
	if err := r.PrepareCmd(5, 0xc0207504, payload, 0xabc); err != nil {
		t.Fatal(err)
	}
	raw := r.sqes[:2*sqeSize]
	e := (*sqe)(unsafe.Pointer(&raw[0]))
	if raw[0] != opURingCmd || e.fd != 5 || uint32(e.off) != 0xc0207504 || e.userData != 0xabc {
		t.Fatalf("entry %+v", e)
	}
	for i, b := range raw[48 : 48+32] {
		if b != byte(i+1) {
			t.Fatalf("payload byte %d is %d at entry offset %d", i, b, 48+i)
		}
	}
	if err := r.PrepareCmd(5, 1, make([]byte, 81), 0); err == nil {
		t.Fatal("an 81-byte command fitted a 128-byte entry")
	}
	r.pending = 0 // never submitted: the fd is not a ublk device
}
