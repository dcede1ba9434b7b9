package daemon

import (
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// A swap device's server must not take a page fault on fresh memory while it
// serves (docs/guest.md): the kernel may be out of memory and waiting
// for the very request. mlockall (swapsafe) keeps what was touched, and the
// request path's own buffers are touched at start (blockdev), but the Go
// runtime takes fresh memory on its own: new OS threads (stacks), goroutine
// stack growth and heap spans. prepareRuntime makes that memory exist,
// touched and locked, before the first request, and keeps the runtime from
// giving it back:
//
//   - Under mlock, the scavenger's madvise(MADV_DONTNEED) fails (EINVAL on a
//     VM_LOCKED mapping) and the runtime falls back to remapping the range
//     with mmap(MAP_FIXED): the pages are gone and the next use faults. The
//     scavenger releases only what the heap retains beyond about 110% of the
//     in-use heap at the last GC, so a large live ballast that is never
//     touched (virtual address space only, no memory) raises that bound
//     above what the server retains, and the pages stay.
//   - With the ballast live, GOGC 10 lets garbage grow about 26 MiB between
//     collections, close to the heap warmed below; default GOGC would let it
//     grow by the ballast's size.
//   - warmHeap allocates and touches heapWarm bytes of small spans, then
//     drops them: the free heap pages that later allocations, goroutine
//     stacks and new threads' stacks take are already faulted in.
//   - warmThreads starts OS threads ahead of need: the runtime starts one
//     whenever goroutines block in system calls (the store's refiller in
//     madvise, say), and a thread's stacks are fresh memory. Idle threads
//     stay in the runtime's pool; they never exit.
const (
	ballastBytes = 256 << 20
	heapWarm     = 16 << 20
	warmGOGC     = 10
)

// ballast is never read or written: it only counts as live heap.
var (
	ballast     []byte
	prepareOnce sync.Once
)

// prepareRuntime is called once, after swapsafe has locked memory and
// before the server accepts connections. It is a no-op without mlock: then
// touched pages can be swapped out anyway.
func prepareRuntime() { prepareOnce.Do(prepare) }

func prepare() {
	ballast = make([]byte, ballastBytes) // fresh mapping: not zeroed, not touched
	warmThreads(max(16, 4*runtime.GOMAXPROCS(0)))
	warmHeap(heapWarm)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(warmGOGC)
	}
	// Two cycles: the collector's own structures (work buffers, span sets,
	// mark bits) are allocated, and what warmHeap dropped is swept free.
	runtime.GC()
	runtime.GC()
}

// warmThreads makes sure the runtime has at least n OS threads: n goroutines
// each lock a thread and wait together, so each needs its own, then unlock
// and return, leaving the threads idle in the runtime's pool.
func warmThreads(n int) {
	var started, done sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < n; i++ {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			started.Done()
			<-release
			// Some stack depth, touched on this thread's goroutine stack.
			deepStack(64)
			runtime.UnlockOSThread() // the thread stays (it exits only if still locked)
		}()
	}
	started.Wait()
	time.Sleep(10 * time.Millisecond)
	close(release)
	done.Wait()
}

// deepStack grows the calling goroutine's stack to about n KiB once, so the
// stack pool holds stacks of that size, faulted in.
//
//go:noinline
func deepStack(n int) byte {
	var frame [1024]byte
	frame[n%len(frame)] = byte(n)
	if n <= 1 {
		return frame[0]
	}
	return deepStack(n-1) + frame[n%len(frame)]
}

// warmHeap allocates n bytes in 8 KiB objects (one-page spans, so the page
// allocator fills every free gap of the heap first), touches every page and
// drops them.
func warmHeap(n int) { runtime.KeepAlive(touchHeap(n)) }

// touchHeap allocates n bytes in 8 KiB objects and touches every page.
func touchHeap(n int) [][]byte {
	const chunk = 8 << 10
	keep := make([][]byte, 0, n/chunk)
	for i := 0; i < n/chunk; i++ {
		b := make([]byte, chunk)
		for j := 0; j < chunk; j += 4096 {
			b[j] = 1
		}
		keep = append(keep, b)
	}
	return keep
}

// Memory back after a big TRIM. The store gives its own memory back at once
// (pagestore), but the Go heap keeps what it grew to: the span records of a
// full store (about 1% of it), connection buffers, and the garbage GOGC lets
// pile up between collections (about 26 MiB beside the ballast). Under the
// ballast the scavenger never returns any of it, and without one it takes
// minutes. So once the devices' store memory has fallen by heapReturnDrop
// from its peak and then held still for a poll (the TRIMs are over, no
// swap traffic is running), the heap is collected and its free pages go
// back to the OS, except heapWarm bytes kept faulted in as prepare left them.
const (
	heapPoll       = 5 * time.Second
	heapReturnDrop = 32 << 20
)

// heapReturn decides when to give heap memory back; used reports the store
// memory of every device.
//
// A connection that ends leaves its buffers (prefaulted request pages and
// big buffers, 2-3 MiB) as garbage too, which no collection comes for: the
// serving path allocates nothing. So a connection's end, once store memory
// holds still, also gives the heap back.
type heapReturn struct {
	used       func() int64
	peak, last int64
	connEnded  atomic.Bool
}

// due takes one sample and reports whether the heap should go back now.
func (h *heapReturn) due() bool {
	cur := h.used()
	h.peak = max(h.peak, cur)
	still := cur == h.last
	h.last = cur
	if still && (h.peak-cur >= heapReturnDrop || h.connEnded.Swap(false)) {
		h.peak = cur
		return true
	}
	return false
}

// watchHeap runs h until stop is closed, returning the heap when due.
func watchHeap(h *heapReturn, stop <-chan struct{}) {
	t := time.NewTicker(heapPoll)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if h.due() {
				returnHeap(ballast != nil)
			}
		}
	}
}

// startHeapReturn starts watching the devices' store memory and returns the
// function that stops it.
func (d *Daemon) startHeapReturn() (stop func()) {
	h := d.heap
	h.used = d.storeMemory
	h.last = h.used()
	done := make(chan struct{})
	go watchHeap(h, done)
	return func() { close(done) }
}

// storeMemory is the store memory (mem_used_total) of every device.
func (d *Daemon) storeMemory() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var n int64
	for _, e := range d.devs {
		n += e.dev.Stats().MemUsedTotal
	}
	return n
}

// returnHeap collects the heap and gives its free pages back to the OS. With
// warm (prepare ran: memory is locked and the serving path must not fault)
// heapWarm bytes of it are held, touched, while the rest goes, then dropped,
// so the heap is left as warm as prepare left it and there is no moment
// without free pages already faulted in. Under mlock the runtime's
// MADV_DONTNEED fails and it remaps the range instead: the memory still goes.
func returnHeap(warm bool) {
	var keep [][]byte
	if warm {
		keep = touchHeap(heapWarm)
	}
	debug.FreeOSMemory()
	runtime.KeepAlive(keep)
	if warm {
		keep = nil
		// Sweep what keep held back into free heap pages, resident.
		runtime.GC()
		runtime.GC()
	}
}
