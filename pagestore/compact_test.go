package pagestore

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCompactProperty: random Put/Free/Compact sequences, every object's
// content and the accounting checked after every compaction.
func TestCompactProperty(t *testing.T) {
	for seed := range uint64(2) {
		s := newStore(t, Options{})
		m := model{}
		rng := rand.New(rand.NewPCG(seed, 99))
		var hs []Handle
		var freedTotal int64
		for i := range 12000 {
			switch r := rng.IntN(200); {
			case r < 110:
				// Few sizes, so classes hold many objects and fragment.
				size := []int{40, 700, 1900, 2048, 2500, 3000, 4096}[rng.IntN(7)] - rng.IntN(16)
				hs = append(hs, put(t, s, m, rng.Uint64(), size))
			case r < 199 && len(hs) > 0:
				j := rng.IntN(len(hs))
				s.Free(hs[j])
				delete(m, hs[j])
				hs[j] = hs[len(hs)-1]
				hs = hs[:len(hs)-1]
			default:
				before := s.Stats()
				freed := s.Compact()
				freedTotal += freed
				after := s.Stats()
				checkAll(t, s, m)
				checkStats(t, s, m)
				if after.FreeableBytes != 0 {
					t.Fatalf("step %d: %d bytes still freeable after Compact", i, after.FreeableBytes)
				}
				if before.MemUsed-after.MemUsed != freed*PageSize {
					t.Fatalf("step %d: Compact says %d pages, MemUsed fell %d", i, freed, before.MemUsed-after.MemUsed)
				}
			}
		}
		st := s.Stats()
		if st.PagesCompacted != freedTotal || freedTotal == 0 {
			t.Fatalf("PagesCompacted %d, Compact returned %d in all", st.PagesCompacted, freedTotal)
		}
	}
}

// TestCompactPacks: after freeing most objects at random, compaction brings
// MemUsed close to what the live objects need.
func TestCompactPacks(t *testing.T) {
	s := newStore(t, Options{})
	m := model{}
	rng := rand.New(rand.NewPCG(7, 8))
	var hs []Handle
	for range 30000 {
		hs = append(hs, put(t, s, m, rng.Uint64(), 1500+rng.IntN(1000)))
	}
	for _, j := range rng.Perm(len(hs))[:len(hs)*3/4] {
		s.Free(hs[j])
		delete(m, hs[j])
	}
	before := s.Stats()
	freed := s.Compact()
	after := s.Stats()
	checkAll(t, s, m)
	checkStats(t, s, m)
	t.Logf("MemUsed/ObjBytes before %.3f after %.3f, %d pages freed, longest step %v",
		float64(before.MemUsed)/float64(before.ObjBytes), float64(after.MemUsed)/float64(after.ObjBytes),
		freed, after.LongestCompactStep)
	// Packed as tightly as spans allow: each class holds exactly the spans its
	// objects need. (At this small size the one partial span per class is
	// most of the overhead left; the benchmarks measure realistic sizes.)
	for _, c := range after.Classes {
		if need := (c.Objects + int64(c.ObjsPerSpan) - 1) / int64(c.ObjsPerSpan); c.Spans != need {
			t.Fatalf("class %+v: %d spans, needs %d", c, c.Spans, need)
		}
	}
	if res, _ := residentPages(t, s); int64(res)*PageSize > after.MemUsed {
		t.Fatalf("%d pages resident, MemUsed %d", res, after.MemUsed)
	}
}

// TestCompactConcurrent: goroutines Put, Read (verifying) and Free their own
// objects while another loops Compact. Run with -race.
func TestCompactConcurrent(t *testing.T) {
	s := newStore(t, Options{})
	const workers = 4
	var stop atomic.Bool
	var compactions, pages atomic.Int64
	var wg, workersDone sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			pages.Add(s.Compact())
			compactions.Add(1)
		}
	}()
	models := make([]model, workers)
	errs := make(chan string, workers)
	for w := range workers {
		models[w] = model{}
		workersDone.Add(1)
		go func(w int) {
			defer workersDone.Done()
			m := models[w]
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, MaxObjectSize)
			want := make([]byte, MaxObjectSize)
			var hs []Handle
			for i := 0; i < 15000; i++ {
				switch r := rng.IntN(10); {
				case r < 4 || len(hs) == 0:
					size := []int{100, 1000, 2000, 3000}[rng.IntN(4)] + rng.IntN(50)
					seed := rng.Uint64()
					fill(buf[:size], seed)
					h, err := s.Put(buf[:size])
					if err != nil {
						errs <- err.Error()
						return
					}
					m[h] = obj{seed, size}
					hs = append(hs, h)
				case r < 8:
					h := hs[rng.IntN(len(hs))]
					o := m[h]
					fill(want[:o.size], o.seed)
					if n := s.Read(h, buf); n != o.size || string(buf[:n]) != string(want[:o.size]) {
						errs <- "content differs under compaction"
						return
					}
				default:
					j := rng.IntN(len(hs))
					s.Free(hs[j])
					delete(m, hs[j])
					hs[j] = hs[len(hs)-1]
					hs = hs[:len(hs)-1]
				}
			}
		}(w)
	}
	workersDone.Wait()
	stop.Store(true)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	all := model{}
	for _, m := range models {
		for h, o := range m {
			all[h] = o
		}
	}
	checkAll(t, s, all)
	checkStats(t, s, all)
	t.Logf("%d compactions freed %d pages; longest step %v", compactions.Load(), pages.Load(), s.Stats().LongestCompactStep)
}

// TestAutoCompact: frees that fragment the store past the threshold wake the
// background compactor, which brings the freeable memory back down.
func TestAutoCompact(t *testing.T) {
	s := newStore(t, Options{AutoCompact: true, CompactRatio: 0.05, CompactMinBytes: 64 << 10})
	m := model{}
	rng := rand.New(rand.NewPCG(3, 4))
	var hs []Handle
	for range 20000 {
		hs = append(hs, put(t, s, m, rng.Uint64(), 1800+rng.IntN(600)))
	}
	for _, j := range rng.Perm(len(hs))[:len(hs)/2] {
		s.Free(hs[j])
		delete(m, hs[j])
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.Stats()
		if st.AutoCompactions > 0 && st.PagesCompacted > 0 && st.FreeableBytes < int64(0.05*float64(st.MemUsed)) {
			t.Logf("auto compaction: %d runs, %d pages, MemUsed/ObjBytes %.3f, longest step %v",
				st.AutoCompactions, st.PagesCompacted, float64(st.MemUsed)/float64(st.ObjBytes), st.LongestCompactStep)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("auto compaction did not run: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	checkAll(t, s, m)
	checkStats(t, s, m)
}
