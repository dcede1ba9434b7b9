package pagestore

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lz4Sizes draws object sizes like lz4-compressed 4 KiB pages of mixed data:
// mostly around 2 KiB with a wide spread, and a tenth stored raw (4096) as a
// block device stores incompressible pages.
func lz4Sizes(n int, seed uint64) []int {
	rng := rand.New(rand.NewPCG(seed, 0))
	sizes := make([]int, n)
	for i := range sizes {
		if rng.IntN(10) == 0 {
			sizes[i] = MaxObjectSize
			continue
		}
		sz := int(2048 + 600*rng.NormFloat64())
		sizes[i] = max(64, min(sz, 3600))
	}
	return sizes
}

func benchStore(b *testing.B) *Store {
	s, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

const benchLive = 1 << 16 // objects live in the big-store benchmarks (~128 MiB)

// benchSets: "hot" keeps 1024 objects of one class (~2 MiB, mostly in cache,
// spans stay resident) to show the store's own cost; "cold" keeps 64Ki
// objects of the lz4-like mix (~128 MiB) so accesses miss the caches and TLB
// and classes gain and lose spans, as on a real device.
var benchSets = []struct {
	name  string
	live  int
	sizes func(n int, seed uint64) []int
}{
	{"hot", 1024, func(n int, _ uint64) []int { return slices.Repeat([]int{2000}, n) }},
	{"cold", benchLive, lz4Sizes},
}

// BenchmarkPut fills an empty store: it includes mapping and first-touch page
// faults of new spans, as filling a fresh device does.
func BenchmarkPut(b *testing.B) {
	for _, set := range benchSets {
		b.Run(set.name, func(b *testing.B) {
			s := benchStore(b)
			sizes := set.sizes(set.live, 1)
			buf := make([]byte, MaxObjectSize)
			fill(buf, 1)
			hs := make([]Handle, 0, set.live)
			b.ReportAllocs()
			for b.Loop() {
				if len(hs) == set.live {
					b.StopTimer()
					for _, h := range hs {
						s.Free(h)
					}
					hs = hs[:0]
					b.StartTimer()
				}
				h, err := s.Put(buf[:sizes[len(hs)]])
				if err != nil {
					b.Fatal(err)
				}
				hs = append(hs, h)
			}
		})
	}
}

// BenchmarkReplace is the steady state of a full device: each op frees a
// random live object and stores a new one (one Free plus one Put), so slots
// are reused in spans whose pages are already resident.
func BenchmarkReplace(b *testing.B) {
	for _, set := range benchSets {
		b.Run(set.name, func(b *testing.B) {
			s := benchStore(b)
			sizes := set.sizes(set.live, 1)
			buf := make([]byte, MaxObjectSize)
			fill(buf, 1)
			hs := make([]Handle, set.live)
			for i, n := range sizes {
				hs[i], _ = s.Put(buf[:n])
			}
			rng := rand.New(rand.NewPCG(2, 2))
			b.ReportAllocs()
			for b.Loop() {
				i := rng.IntN(set.live)
				s.Free(hs[i])
				h, err := s.Put(buf[:sizes[rng.IntN(set.live)]])
				if err != nil {
					b.Fatal(err)
				}
				hs[i] = h
			}
		})
	}
}

func BenchmarkRead(b *testing.B) {
	for _, set := range benchSets {
		b.Run(set.name, func(b *testing.B) {
			s := benchStore(b)
			sizes := set.sizes(set.live, 2)
			buf := make([]byte, MaxObjectSize)
			fill(buf, 2)
			hs := make([]Handle, set.live)
			for i, n := range sizes {
				hs[i], _ = s.Put(buf[:n])
			}
			order := rand.New(rand.NewPCG(1, 1)).Perm(set.live)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				s.Read(hs[order[i%set.live]], buf)
				i++
			}
		})
	}
}

// BenchmarkFree empties a store in random order: it includes giving emptied
// spans back (madvise), as trimming a device does.
func BenchmarkFree(b *testing.B) {
	for _, set := range benchSets {
		b.Run(set.name, func(b *testing.B) {
			s := benchStore(b)
			sizes := set.sizes(set.live, 3)
			buf := make([]byte, MaxObjectSize)
			hs := make([]Handle, 0, set.live)
			rng := rand.New(rand.NewPCG(1, 1))
			refill := func() {
				hs = hs[:0]
				for _, n := range sizes {
					h, _ := s.Put(buf[:n])
					hs = append(hs, h)
				}
				rng.Shuffle(len(hs), func(i, j int) { hs[i], hs[j] = hs[j], hs[i] })
			}
			refill()
			b.ReportAllocs()
			for b.Loop() {
				if len(hs) == 0 {
					b.StopTimer()
					refill()
					b.StartTimer()
				}
				s.Free(hs[len(hs)-1])
				hs = hs[:len(hs)-1]
			}
		})
	}
}

// BenchmarkParallel mixes the block device's traffic (half reads, a quarter
// overwrites as Free+Put) from every core against a store of ~128 MiB.
func BenchmarkParallel(b *testing.B) {
	s := benchStore(b)
	sizes := lz4Sizes(benchLive, 4)
	buf := make([]byte, MaxObjectSize)
	hs := make([]atomic.Uint64, benchLive)
	for i, n := range sizes {
		h, _ := s.Put(buf[:n])
		hs[i].Store(uint64(h))
	}
	var next atomic.Uint64
	var mu [256]sync.Mutex // per-page serialisation, as the block device does
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(next.Add(1), 7))
		dst := make([]byte, MaxObjectSize)
		for pb.Next() {
			i := rng.IntN(benchLive)
			l := &mu[i&255]
			l.Lock()
			h := Handle(hs[i].Load())
			if rng.IntN(2) == 0 {
				s.Read(h, dst)
			} else {
				s.Free(h)
				nh, err := s.Put(buf[:sizes[rng.IntN(benchLive)]])
				if err != nil {
					panic(err)
				}
				hs[i].Store(uint64(nh))
			}
			l.Unlock()
		}
	})
}

// BenchmarkOverhead reports memory per byte of object for the lz4-like size
// distribution: right after filling, after overwriting a third of the pages
// (fragmenting), and after compacting that.
func BenchmarkOverhead(b *testing.B) {
	const n = 1 << 17 // ~256 MiB of objects
	for b.Loop() {
		s := benchStore(b)
		sizes := lz4Sizes(n, 5)
		buf := make([]byte, MaxObjectSize)
		hs := make([]Handle, n)
		for i, sz := range sizes {
			hs[i], _ = s.Put(buf[:sz])
		}
		st := s.Stats()
		b.ReportMetric(float64(st.MemUsed)/float64(st.ObjBytes), "mem/obj")
		b.ReportMetric(float64(st.MemUsed+st.MetadataBytes)/float64(st.ObjBytes), "(mem+meta)/obj")
		b.ReportMetric(float64(st.MetadataBytes)/float64(st.Objects), "meta-B/obj")
		rng := rand.New(rand.NewPCG(6, 6))
		more := lz4Sizes(n/3, 7)
		for _, sz := range more { // overwrite a third of the pages with new sizes
			i := rng.IntN(n)
			s.Free(hs[i])
			hs[i], _ = s.Put(buf[:sz])
		}
		st = s.Stats()
		b.ReportMetric(float64(st.MemUsed)/float64(st.ObjBytes), "mem/obj-fragmented")
		s.Compact()
		st = s.Stats()
		b.ReportMetric(float64(st.MemUsed)/float64(st.ObjBytes), "mem/obj-compacted")
		s.Close()
	}
}

// BenchmarkCompactStall compacts a store fragmented by freeing half its
// objects at random while readers on the other cores time each Read: the worst
// Read latency is the stall compaction causes. Reported: max and p99.9 Read
// latency during compaction, the longest class-lock hold of a compaction
// step, and compaction time for the whole store.
func BenchmarkCompactStall(b *testing.B) {
	const n = 1 << 16
	var worst, p999, hold, took, stepP50, stepP99 time.Duration
	for b.Loop() {
		b.StopTimer()
		s := benchStore(b)
		sizes := lz4Sizes(n, 8)
		buf := make([]byte, MaxObjectSize)
		hs := make([]Handle, n)
		for i, sz := range sizes {
			hs[i], _ = s.Put(buf[:sz])
		}
		var live []Handle
		for i, j := range rand.New(rand.NewPCG(9, 9)).Perm(n) {
			if i%2 == 0 {
				s.Free(hs[j])
			} else {
				live = append(live, hs[j])
			}
		}
		var steps []time.Duration
		s.stepHook = func(d time.Duration) { steps = append(steps, d) }
		runtime.GC()
		var stop atomic.Bool
		var wg sync.WaitGroup
		// One core is left to the compactor: with more runnable goroutines
		// than cores, a Read's latency would be the Go scheduler's time slice.
		lat := make([][]time.Duration, max(1, runtime.GOMAXPROCS(0)-1))
		for r := range lat {
			wg.Add(1)
			go func(r int) {
				defer wg.Done()
				dst := make([]byte, MaxObjectSize)
				l := make([]time.Duration, 0, 1<<20)
				for i := r; !stop.Load(); i++ {
					t0 := time.Now()
					s.Read(live[i%len(live)], dst)
					if len(l) < cap(l) {
						l = append(l, time.Since(t0))
					}
				}
				lat[r] = l
			}(r)
		}
		b.StartTimer()
		t0 := time.Now()
		s.Compact()
		took = time.Since(t0)
		b.StopTimer()
		stop.Store(true)
		wg.Wait()
		all := slices.Concat(lat...)
		slices.Sort(all)
		worst = all[len(all)-1]
		p999 = all[len(all)*999/1000]
		hold = s.Stats().LongestCompactStep
		slices.Sort(steps)
		stepP50, stepP99 = steps[len(steps)/2], steps[len(steps)*99/100]
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(worst.Microseconds()), "maxread-us")
	b.ReportMetric(float64(p999.Nanoseconds()), "p99.9read-ns")
	b.ReportMetric(float64(hold.Microseconds()), "maxhold-us")
	b.ReportMetric(float64(stepP50.Microseconds()), "p50hold-us")
	b.ReportMetric(float64(stepP99.Microseconds()), "p99hold-us")
	b.ReportMetric(float64(took.Milliseconds()), "compact-ms")
}
