package streams

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/zcomp"
)

// BenchmarkCPUSlot measures the candidate ways to pick a CPU slot.
func BenchmarkCPUSlot(b *testing.B) {
	b.Run("procPin", func(b *testing.B) {
		s := 0
		for range b.N {
			s += currentP()
		}
		sink.Add(int64(s))
	})
	b.Run("getcpu-rawsyscall", func(b *testing.B) {
		var cpu, node uint32
		s := 0
		for range b.N {
			unix.RawSyscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cpu)), uintptr(unsafe.Pointer(&node)), 0)
			s += int(cpu)
		}
		sink.Add(int64(s))
	})
	b.Run("getcpu-syscall", func(b *testing.B) {
		var cpu, node uint32
		s := 0
		for range b.N {
			unix.Syscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cpu)), uintptr(unsafe.Pointer(&node)), 0)
			s += int(cpu)
		}
		sink.Add(int64(s))
	})
	b.Run("GOMAXPROCS(0)", func(b *testing.B) {
		s := 0
		for range b.N {
			s += runtime.GOMAXPROCS(0)
		}
		sink.Add(int64(s))
	})
}

var sink atomic.Int64

// benchCallers are the concurrency levels of the table in docs/benchmarks.md.
var benchCallers = []int{1, 2, 8, 64, 256}

// BenchmarkGetPut runs Get, (optionally) compress+decompress of a 4 KiB page,
// Put, from a fixed number of concurrent callers. ns/op is wall time per
// operation across all callers (so lower is more throughput).
func BenchmarkGetPut(b *testing.B) {
	algos := []string{"none", "lz4", "zstd"}
	for _, algo := range algos {
		name := algo
		if algo == "none" { // Get/Put alone: the strategy's own overhead
			name = "lz4"
		}
		be, err := zcomp.Lookup(name)
		if err != nil {
			b.Logf("skipping %s: %v", algo, err)
			continue
		}
		// Modes innermost: the two runs being compared are adjacent in time,
		// which matters on a shared, noisy machine.
		for _, c := range benchCallers {
			for _, m := range modes {
				b.Run(fmt.Sprintf("algo=%s/mode=%v/callers=%d", algo, m, c), func(b *testing.B) {
					benchPool(b, be, m, c, algo != "none")
				})
			}
		}
	}
}

func benchPool(b *testing.B, be zcomp.Backend, m Mode, callers int, work bool) {
	p, err := NewPool(PoolConfig{Backend: be, Mode: m, Prealloc: true})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Kill()
	src := testPages[5]
	start := make(chan struct{})
	var wg sync.WaitGroup
	for c := range callers {
		n := b.N / callers
		if c < b.N%callers {
			n++
		}
		out := make([]byte, zcomp.PageSize)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range n {
				s, err := p.Get()
				if err != nil {
					b.Error(err)
					return
				}
				if work {
					k, err := s.Ctx.Compress(s.Buf[:zcomp.PageSize], src)
					if err == nil {
						_, err = s.Ctx.Decompress(out, s.Buf[:k])
					}
					if err != nil {
						b.Error(err)
					}
				}
				p.Put(s)
			}
		}()
	}
	b.ReportAllocs()
	b.ResetTimer()
	close(start)
	wg.Wait()
	b.StopTimer()
	st := p.Stats()
	b.ReportMetric(float64(st.Waits)/float64(b.N), "waits/op")
}

// BenchmarkRef compares the sharded refcount with one shared atomic, the
// per-page cost of pinning the pool (Ref on store, Unref on free).
func BenchmarkRef(b *testing.B) {
	b.Run("sharded", func(b *testing.B) {
		p, _ := NewPool(PoolConfig{Backend: zcompMust(b), Mode: Pooled})
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				p.Ref()
				p.Unref()
			}
		})
	})
	b.Run("one-atomic", func(b *testing.B) {
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				n.Add(1)
				n.Add(-1)
			}
		})
	})
}

func zcompMust(b *testing.B) zcomp.Backend {
	be, err := zcomp.Lookup("lz4")
	if err != nil {
		b.Fatal(err)
	}
	return be
}
