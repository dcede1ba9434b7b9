// Command memcheck pushes a machine into swap and proves swap lost nothing.
//
// It maps -size bytes of anonymous memory in -chunk pieces, fills every 4 KiB
// page with a pattern derived from the seed and the page's index, then reads
// every page back (in the opposite order, so the earliest pages, the likeliest
// to have been swapped out, are checked first) and compares each byte with a
// fresh copy of the pattern. The pattern compresses like ordinary memory
// rather than like zeros or noise: one page in eight is same-filled (zram
// stores only its fill word), the rest hold -random bytes of noise followed
// by a repeated motif. A sampler tracks peak swap use from /proc/meminfo.
// hack/guest-swap.sh runs it inside the guest VM and parses the last line,
// "memcheck: result=PASS|FAIL key=value ...".
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const pageSize = 4096

func main() {
	size := flag.String("size", "1G", "memory to fill: bytes, or with a K, M or G suffix")
	chunk := flag.String("chunk", "16M", "mapping size; one worker fills or checks one chunk at a time")
	workers := flag.Int("workers", 2, "goroutines filling and checking in parallel")
	seed := flag.Uint64("seed", 1, "pattern seed")
	random := flag.Int("random", 512, "bytes of noise at the start of each non-same-filled page (0-4096); the rest repeats a 64-byte motif")
	hold := flag.Bool("hold", false, "after checking, print \"memcheck: holding\" and keep the memory until SIGUSR1, so an observer can sample swap while it is full")
	recheck := flag.Bool("recheck", false, "with -hold: check every page again after SIGUSR1 (the swap device may have changed hands meanwhile)")
	lockSelf := flag.Bool("lock-self", true, "mlock the program's own pages (not the memory it fills) so reclaim cannot evict its code")
	flag.Parse()
	if *lockSelf {
		// Without this its text pages are the cheapest to reclaim, and in the
		// guest every refault is a 9p round trip: the run crawls to a halt.
		// MCL_ONFAULT without MCL_FUTURE: only mappings that exist now.
		if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_ONFAULT); err != nil {
			fmt.Printf("memcheck: warning: mlockall: %v\n", err)
		}
	}

	total, err1 := parseSize(*size)
	csize, err2 := parseSize(*chunk)
	switch {
	case err1 != nil || err2 != nil:
		fail("bad size: %v %v", err1, err2)
	case *random < 0 || *random > pageSize || *random%8 != 0:
		fail("-random must be a multiple of 8 in 0..4096")
	case csize < pageSize || csize%pageSize != 0 || total < csize:
		fail("-chunk must be a multiple of 4 KiB no larger than -size")
	}
	r := run{seed: *seed, random: *random, chunk: csize, workers: *workers}
	r.chunks = int(total / csize)
	os.Exit(r.main(*hold, *recheck))
}

type run struct {
	seed    uint64
	random  int
	chunk   int64
	chunks  int
	workers int
	mem     [][]byte
	bad     atomic.Int64 // pages that differed
	badByte atomic.Int64 // bytes that differed
	first   sync.Once
}

func (r *run) main(hold, recheck bool) int {
	release := make(chan os.Signal, 1)
	if hold {
		signal.Notify(release, syscall.SIGUSR1)
	}
	samp := startSampler()
	fmt.Printf("memcheck: filling %d MiB in %d chunks of %d MiB with %d workers (seed %d, %d random bytes/page)\n",
		int64(r.chunks)*r.chunk>>20, r.chunks, r.chunk>>20, r.workers, r.seed, r.random)
	start := time.Now()
	r.mem = make([][]byte, r.chunks)
	order := make([]int, r.chunks)
	for i := range order {
		order[i] = i
	}
	r.parallel("fill", order, r.fill)
	tFill := time.Since(start)
	fmt.Printf("memcheck: filled in %.1fs, swap used %d KiB\n", tFill.Seconds(), samp.now())

	for i := range order {
		order[i] = r.chunks - 1 - i
	}
	t1 := time.Now()
	r.parallel("check", order, r.check)
	tCheck := time.Since(t1)
	fmt.Printf("memcheck: checked in %.1fs, swap used %d KiB\n", tCheck.Seconds(), samp.now())
	if hold {
		fmt.Println("memcheck: holding")
		<-release
		if recheck {
			t2 := time.Now()
			r.parallel("recheck", order, r.check)
			fmt.Printf("memcheck: checked again in %.1fs, swap used %d KiB\n", time.Since(t2).Seconds(), samp.now())
		}
	}
	peak := samp.stop()
	elapsed := time.Since(start)

	// Unmap now so the caller sees swap freed: swap slots of unmapped pages
	// are released, and with swapon --discard=pages discarded.
	for _, m := range r.mem {
		if m != nil {
			_ = syscall.Munmap(m)
		}
	}
	time.Sleep(500 * time.Millisecond)
	after := swapUsedKiB()

	result := "PASS"
	if r.bad.Load() != 0 {
		result = "FAIL"
	}
	fmt.Printf("memcheck: result=%s mib=%d pages=%d bad_pages=%d bad_bytes=%d fill_s=%.1f check_s=%.1f elapsed_s=%.1f peak_swap_kib=%d swap_after_free_kib=%d\n",
		result, int64(r.chunks)*r.chunk>>20, int64(r.chunks)*r.chunk/pageSize, r.bad.Load(), r.badByte.Load(),
		tFill.Seconds(), tCheck.Seconds(), elapsed.Seconds(), peak, after)
	if result != "PASS" {
		return 1
	}
	return 0
}

// parallel runs f over the chunk indexes in order, r.workers at a time, and
// reports progress every eighth of the way: under swap pressure in an
// emulated guest a phase takes minutes, and a stall must be told from a crawl.
func (r *run) parallel(phase string, order []int, f func(ci int)) {
	start := time.Now()
	var done atomic.Int64
	step := max(len(order)/8, 1)
	next := make(chan int)
	var wg sync.WaitGroup
	for range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ci := range next {
				f(ci)
				if n := done.Add(1); n%int64(step) == 0 && int(n) < len(order) {
					fmt.Printf("memcheck: %s %d/%d chunks, %.1fs, swap used %d KiB\n",
						phase, n, len(order), time.Since(start).Seconds(), swapUsedKiB())
				}
			}
		}()
	}
	for _, ci := range order {
		next <- ci
	}
	close(next)
	wg.Wait()
}

func (r *run) fill(ci int) {
	// Anonymous mappings outside the Go heap: the GC never scans or moves
	// them, and munmap gives them back at once.
	m, err := syscall.Mmap(-1, 0, int(r.chunk), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
	if err != nil {
		fail("mmap chunk %d: %v", ci, err)
	}
	r.mem[ci] = m
	base := uint64(ci) * uint64(r.chunk/pageSize)
	for off := 0; off < len(m); off += pageSize {
		r.pattern(m[off:off+pageSize], base+uint64(off/pageSize))
	}
}

func (r *run) check(ci int) {
	m := r.mem[ci]
	base := uint64(ci) * uint64(r.chunk/pageSize)
	var want [pageSize]byte
	for off := 0; off < len(m); off += pageSize {
		p := base + uint64(off/pageSize)
		r.pattern(want[:], p)
		got := m[off : off+pageSize]
		if bytes.Equal(got, want[:]) {
			continue
		}
		n := 0
		firstAt := -1
		for i := range got {
			if got[i] != want[i] {
				if firstAt < 0 {
					firstAt = i
				}
				n++
			}
		}
		r.bad.Add(1)
		r.badByte.Add(int64(n))
		r.first.Do(func() {
			fmt.Printf("memcheck: first bad page %d (chunk %d): %d bytes differ from offset %d; got % x want % x\n",
				p, ci, n, firstAt, got[firstAt:min(firstAt+16, pageSize)], want[firstAt:min(firstAt+16, pageSize)])
		})
	}
}

// pattern writes page p's content into dst. One page in eight is filled
// with a single word; the others start with r.random bytes of noise and
// repeat a 64-byte motif, both drawn from (seed, p).
func (r *run) pattern(dst []byte, p uint64) {
	s := r.seed*0x9e3779b97f4a7c15 ^ p
	if p%8 == 3 {
		w := splitmix(&s)
		for i := 0; i < pageSize; i += 8 {
			binary.LittleEndian.PutUint64(dst[i:], w)
		}
		return
	}
	for i := 0; i < r.random; i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], splitmix(&s))
	}
	var motif [64]byte
	for i := 0; i < len(motif); i += 8 {
		binary.LittleEndian.PutUint64(motif[i:], splitmix(&s))
	}
	for i := r.random; i < pageSize; i += len(motif) {
		copy(dst[i:], motif[:])
	}
}

func splitmix(s *uint64) uint64 {
	*s += 0x9e3779b97f4a7c15
	z := *s
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// sampler polls swap use so the peak is known even though the workload
// itself frees it at the end.
type sampler struct {
	peak atomic.Int64
	done chan struct{}
	wg   sync.WaitGroup
}

func startSampler() *sampler {
	s := &sampler{done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			s.now()
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// now samples swap use, records it in the peak and returns it.
func (s *sampler) now() int64 {
	v := swapUsedKiB()
	for {
		p := s.peak.Load()
		if v <= p || s.peak.CompareAndSwap(p, v) {
			return v
		}
	}
}

func (s *sampler) stop() int64 {
	s.now()
	close(s.done)
	s.wg.Wait()
	return s.peak.Load()
}

// swapUsedKiB is SwapTotal - SwapFree from /proc/meminfo, or -1.
func swapUsedKiB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return -1
	}
	defer f.Close()
	var total, free int64 = -1, -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "SwapTotal":
			total = n
		case "SwapFree":
			free = n
		}
	}
	if total < 0 || free < 0 {
		return -1
	}
	return total - free
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with an optional K, M or G suffix", s)
	}
	return n * mult, nil
}

func fail(format string, args ...any) {
	fmt.Printf("memcheck: result=FAIL error=%q\n", fmt.Sprintf(format, args...))
	os.Exit(2)
}
