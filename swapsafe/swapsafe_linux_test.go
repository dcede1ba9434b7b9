//go:build linux

package swapsafe

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStatFlags(t *testing.T) {
	for _, tc := range []struct {
		line string
		want uint64
	}{
		{"11094 (cat) R 11090 11090 8633 0 -1 4194304 97 0 0 0", 4194304},
		// A command name may hold spaces and parentheses.
		{"7 (a) b (c)) S 1 7 7 0 -1 5767232 0 0", 5767232},
	} {
		got, err := parseStatFlags(tc.line)
		if err != nil || got != tc.want {
			t.Errorf("parseStatFlags(%q) = %d, %v; want %d", tc.line, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2"} {
		if _, err := parseStatFlags(bad); err == nil {
			t.Errorf("parseStatFlags(%q) succeeded", bad)
		}
	}
}

// skipUnprivileged fails on errors from Apply, except that it skips when the
// process lacks the capability or the kernel the feature: containers often
// drop CAP_SYS_RESOURCE even for root.
func skipUnprivileged(t *testing.T, errs []error) {
	t.Helper()
	for _, err := range errs {
		if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) || errors.Is(err, unix.EINVAL) {
			t.Skipf("not available here: %v", err)
		}
		t.Fatalf("Apply: %v", err)
	}
}

// blockers parks n goroutines in blocking read(2) calls on a pipe. A
// goroutine in a blocking system call keeps its OS thread, so the runtime
// starts new threads to run other goroutines: this forces new Ms into being.
type blockers struct {
	r, w int
	wg   sync.WaitGroup
}

func newBlockers(t *testing.T) *blockers {
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	return &blockers{r: p[0], w: p[1]}
}

func (b *blockers) start(n int) {
	for range n {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			var buf [1]byte
			_, _ = syscall.Read(b.r, buf[:])
		}()
	}
}

func (b *blockers) stop() {
	_ = syscall.Close(b.w) // every reader sees EOF
	b.wg.Wait()
	_ = syscall.Close(b.r)
}

// existingThreads makes the threads a per-thread setting must reach when
// it is applied: some blocked in system calls, some locked to goroutines. It
// returns how many threads the process has and a func that ends them.
func existingThreads(t *testing.T) (int, func()) {
	t.Helper()
	before := newBlockers(t)
	before.start(4)
	locked := make(chan struct{})
	var lwg sync.WaitGroup
	for range 2 {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			runtime.LockOSThread()
			<-locked
		}()
	}
	return waitThreads(t, 6), func() {
		close(locked)
		lwg.Wait()
		before.stop()
	}
}

// moreThreads makes the runtime start new threads (8 goroutines blocked
// in read(2)) and waits for them; n0 is how many threads there were. A test
// of what new threads inherit proves nothing without them, so none
// appearing is an error. It returns the func that ends them.
func moreThreads(t *testing.T, n0 int) (stop func()) {
	t.Helper()
	b := newBlockers(t)
	b.start(8)
	n1 := waitThreads(t, n0+8)
	if n1 <= n0 {
		t.Errorf("no new threads appeared (%d before, %d after); the inheritance check proves nothing", n0, n1)
	}
	t.Logf("threads: %d before, %d after forcing new ones", n0, n1)
	return b.stop
}

// waitThreads waits until the process has at least n threads.
func waitThreads(t *testing.T, n int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tf, err := ReadThreadFlags()
		if err != nil {
			t.Fatal(err)
		}
		if len(tf) >= n || time.Now().After(deadline) {
			return len(tf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func checkAllFlagged(t *testing.T, when string) {
	t.Helper()
	tf, err := ReadThreadFlags()
	if err != nil {
		t.Fatal(err)
	}
	if miss := tf.Missing(PFIOFlusher); len(miss) > 0 {
		t.Errorf("%s: %d of %d threads lack PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE: %s",
			when, len(miss), len(tf), tf.Describe())
	} else {
		t.Logf("%s: all %d threads flagged", when, len(tf))
	}
}

func TestIOFlusherAllThreads(t *testing.T) {
	if cgoBuild && os.Getenv("UZRAM_SWAPSAFE_CHILD") == "" {
		// With cgo (as under -race) only the start-up constructor can flag
		// every thread, and it acts for `serve` command lines: rerun this
		// test in a child whose arguments say serve.
		cmd := exec.Command(os.Args[0], "-test.run=^TestIOFlusherAllThreads$", "-test.v", "serve")
		cmd.Env = append(os.Environ(), "UZRAM_SWAPSAFE_CHILD=1")
		out, err := cmd.CombinedOutput()
		switch {
		case err != nil:
			t.Fatalf("child: %v\n%s", err, out)
		case strings.Contains(string(out), "--- SKIP"):
			t.Skipf("child skipped:\n%s", out)
		case !strings.Contains(string(out), "--- PASS: TestIOFlusherAllThreads"):
			t.Fatalf("child did not run the test:\n%s", out)
		}
		t.Logf("child:\n%s", out)
		return
	}
	defer func() {
		// Clear the flags again so later tests in this binary start clean.
		_, _, _ = syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_IO_FLUSHER, 0, 0)
	}()

	n0, stop := existingThreads(t)
	defer stop()

	skipUnprivileged(t, Apply(Options{IOFlusher: true}))
	checkAllFlagged(t, "after Apply")

	// New threads after Apply inherit the flags from the thread that clones
	// them; force the runtime to make several more.
	lockedAfter := make(chan struct{})
	var lawg sync.WaitGroup
	for range 3 {
		lawg.Add(1)
		go func() {
			defer lawg.Done()
			runtime.LockOSThread()
			// A goroutine that exits while locked takes its thread with it;
			// meanwhile prove this thread has the flag from its own view.
			v, err := unix.PrctlRetInt(unix.PR_GET_IO_FLUSHER, 0, 0, 0, 0)
			if err != nil || v != 1 {
				t.Errorf("PR_GET_IO_FLUSHER on a new locked thread = %d, %v", v, err)
			}
			<-lockedAfter
		}()
	}
	stopMore := moreThreads(t, n0)
	checkAllFlagged(t, "after new threads")
	close(lockedAfter)
	lawg.Wait()
	stopMore()
}

// vmRSS returns VmRSS from /proc/self/status in KiB.
func vmRSS(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			v, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatal("VmRSS not in /proc/self/status")
	return 0
}

func TestMlockOnFault(t *testing.T) {
	defer func() { _ = unix.Munlockall() }()
	skipUnprivileged(t, Apply(Options{Mlock: true}))

	// MCL_ONFAULT: a new mapping is locked but not populated, so the Go
	// runtime's reservations and a store's untouched arenas cost nothing.
	const size = 128 << 20
	rss0 := vmRSS(t)
	m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Munmap(m) }()
	rss1 := vmRSS(t)
	if rss1-rss0 > 16<<10 {
		t.Errorf("RSS grew %d kB on mapping %d MiB untouched: MCL_FUTURE populated it", rss1-rss0, size>>20)
	}
	for i := 0; i < len(m); i += 4096 {
		m[i] = 1
	}
	rss2 := vmRSS(t)
	t.Logf("RSS %d kB; +%d kB after mapping 128 MiB, +%d kB after touching it", rss0, rss1-rss0, rss2-rss0)
	// Locked pages cannot be dropped with madvise: whoever frees memory
	// inside a locked process must munmap, or munlock first (the Go runtime
	// itself falls back to remapping, so the Go heap still shrinks).
	if err := unix.Madvise(m, unix.MADV_DONTNEED); !errors.Is(err, unix.EINVAL) {
		t.Errorf("madvise(MADV_DONTNEED) on locked memory = %v, want EINVAL: the mapping is not locked", err)
	}

	// The binary's own code must be resident and locked, not just locked
	// on fault: /proc/self/smaps shows Locked == Rss == Size for its text.
	sm, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	var inExe bool
	var tsize, rss, locked int
	checked := 0
	for _, l := range strings.Split(string(sm), "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 && strings.Contains(f[0], "-") {
			inExe = f[5] == exe && strings.Contains(f[1], "x")
			continue
		}
		if !inExe || len(f) < 2 {
			continue
		}
		v, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "Size:":
			tsize = v
		case "Rss:":
			rss = v
		case "Locked:":
			locked = v
			checked++
			if rss < tsize || locked < tsize {
				t.Errorf("text of %s: Size %d kB, Rss %d kB, Locked %d kB: not all read in and locked", exe, tsize, rss, locked)
			}
		}
	}
	if checked == 0 {
		t.Errorf("no executable mapping of %s found in /proc/self/smaps", exe)
	}
}

func TestOOMScoreAdj(t *testing.T) {
	old, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = os.WriteFile("/proc/self/oom_score_adj", old, 0) }()
	skipUnprivileged(t, Apply(Options{OOMScoreAdj: true}))
	got, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != "-1000" {
		t.Errorf("oom_score_adj = %q, want -1000", got)
	}
}

func TestApplyNothing(t *testing.T) {
	if errs := Apply(Options{}); errs != nil {
		t.Errorf("Apply(Options{}) = %v, want nil", errs)
	}
}
