package blockdev

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/uzram/uzram/zcomp"
)

// Page kinds of the mixed data set.
const (
	kindText = iota
	kindBinary
	kindZero
	kindRandom
	kindLowEntropy // huge for lz4, under the huge threshold for zstd
)

// machineBytes reads up to n bytes from the regular files under dir, in
// name order, so every run sees the same data.
func machineBytes(t testing.TB, dir string, n int) []byte {
	t.Helper()
	var out []byte
	filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || len(out) >= n {
			return filepath.SkipDir
		}
		switch filepath.Ext(path) {
		case ".gz", ".xz", ".bz2", ".zst", ".zip":
			return nil // already compressed: not the text we want
		}
		if !e.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil {
			out = append(out, b[:min(len(b), n-len(out))]...)
		}
		return nil
	})
	if len(out) < n {
		t.Skipf("only %d bytes under %s, want %d", len(out), dir, n)
	}
	return out
}

// mixedPages builds n pages cycling through the kinds: text from
// /usr/share/doc, binaries from /usr/bin, zeros, random, low-entropy.
func mixedPages(t testing.TB, n int) ([][]byte, []int) {
	t.Helper()
	text := machineBytes(t, "/usr/share/doc", n*PageSize/5+PageSize)
	bin := machineBytes(t, "/usr/bin", n*PageSize/5+PageSize)
	r := rand.New(rand.NewPCG(11, 12))
	pages, kinds := make([][]byte, n), make([]int, n)
	for i := range pages {
		p := make([]byte, PageSize)
		k := i % 5
		switch k {
		case kindText:
			copy(p, text[i/5*PageSize:])
		case kindBinary:
			copy(p, bin[i/5*PageSize:])
		case kindRandom:
			for j := range p {
				p[j] = byte(r.Uint32())
			}
		case kindLowEntropy: // lz4 ~3990 bytes (huge), zstd ~3370
			for j := range p {
				if j < 2400 {
					p[j] = byte(r.Uint32())
				} else {
					p[j] = byte(r.IntN(4))
				}
			}
		}
		if _, same := sameFilled(p); same && k != kindZero {
			k = kindZero // a run of one byte in a file
		}
		pages[i], kinds[i] = p, k
	}
	return pages, kinds
}

func newRecompDevice(t testing.TB, pages int, primary string, secondary ...string) *Device {
	t.Helper()
	d := newTestDevice(t, int64(pages)*PageSize, primary)
	for i, algo := range secondary {
		if algo == "" {
			continue
		}
		if err := d.SetRecompAlgorithm(i+1, algo, zcomp.Params{}, ""); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func writePages(t testing.TB, d *Device, pages [][]byte) {
	t.Helper()
	for i, p := range pages {
		if err := d.WriteAt(p, uint64(i)*PageSize, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func verifyPages(t testing.TB, d *Device, pages [][]byte) {
	t.Helper()
	got := make([]byte, PageSize)
	for i, p := range pages {
		if err := d.ReadAt(got, uint64(i)*PageSize); err != nil {
			t.Fatalf("page %d: %v", i, err)
		}
		if !bytes.Equal(got, p) {
			t.Fatalf("page %d reads back different data", i)
		}
	}
}

func recompress(t testing.TB, d *Device, req RecompressRequest) RecompressResult {
	t.Helper()
	res, err := d.Recompress(context.Background(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkNoMarks(t, d)
	return res
}

// checkNoMarks: after a run no slot keeps slotRecomp.
func checkNoMarks(t testing.TB, d *Device) {
	t.Helper()
	for i := range d.slots {
		d.locks.lock(uint64(i))
		f := d.slots[i].flags
		d.locks.unlock(uint64(i))
		if f&slotRecomp != 0 {
			t.Fatalf("page %d still marked for recompression", i)
		}
	}
}

func slotOf(d *Device, page int) slot {
	d.locks.lock(uint64(page))
	defer d.locks.unlock(uint64(page))
	return d.slots[page]
}

// TestRecompressIdleMixed: lz4 primary, zstd at priority 1, idle all, then
// type=idle on text, binaries, zeros and random pages.
func TestRecompressIdleMixed(t *testing.T) {
	const n = 1000
	pages, kinds := mixedPages(t, n)
	d := newRecompDevice(t, n, "lz4", "zstd")
	writePages(t, d, pages)
	before := d.Stats()
	if marked := d.MarkIdle(0); marked != int64(n-before.SamePages) {
		t.Fatalf("idle all marked %d pages, want %d (same-filled are never marked)", marked, n-before.SamePages)
	}
	res := recompress(t, d, RecompressRequest{Type: RecompressIdle})
	after := d.Stats()
	t.Logf("before: %s", before.MMStat())
	t.Logf("after:  %s", after.MMStat())
	t.Logf("result: %+v", res)
	if after.ComprDataSize >= before.ComprDataSize || res.BytesSaved != before.ComprDataSize-after.ComprDataSize {
		t.Fatalf("compr_data_size %d -> %d, result says %d saved", before.ComprDataSize, after.ComprDataSize, res.BytesSaved)
	}
	if res.Candidates != int64(n)-before.SamePages || res.Attempted != res.Candidates || res.Done != res.Candidates {
		t.Fatalf("candidates %d attempted %d done %d, want %d", res.Candidates, res.Attempted, res.Done, n-int(before.SamePages))
	}
	if res.Recompressed+res.Incompressible != res.Attempted {
		t.Fatalf("with one secondary, every attempt either shrinks or is flagged: %+v", res)
	}
	verifyPages(t, d, pages)
	checkStatsConsistent(t, d)
	if after.PriorityPages[1] != res.Recompressed || after.IncompressiblePages != res.Incompressible {
		t.Fatalf("priority pages %v, incompressible %d; result %+v", after.PriorityPages, after.IncompressiblePages, res)
	}
	if after.HugePagesSince != before.HugePagesSince || after.HugePages >= before.HugePages {
		t.Fatalf("huge %d -> %d, since %d -> %d: low-entropy huge pages should shrink", before.HugePages, after.HugePages, before.HugePagesSince, after.HugePagesSince)
	}
	lowEntropy, shrunk := 0, 0
	for i, k := range kinds {
		s := slotOf(d, i)
		if k == kindLowEntropy {
			lowEntropy++
			if s.flags&slotHuge == 0 && d.slotPrio(&s) == 1 {
				shrunk++
			}
		}
		switch {
		case k == kindRandom && s.flags&slotIncompressible == 0:
			t.Fatalf("random page %d not flagged incompressible (flags %b)", i, s.flags)
		case k == kindLowEntropy && s.flags&slotHuge != 0 && s.flags&slotIncompressible == 0:
			t.Fatalf("low-entropy page %d still huge and not flagged (flags %b)", i, s.flags)
		case k != kindZero && s.flags&slotIdle != 0:
			t.Fatalf("page %d still idle after an attempt", i)
		}
	}
	// klauspost's zstd stores about one such page in five raw.
	if shrunk < lowEntropy/2 {
		t.Fatalf("%d of %d low-entropy huge pages shrank under zstd", shrunk, lowEntropy)
	}
	// Second run: recompressed pages are at the highest priority, random
	// ones are flagged: nothing is left to try.
	d.MarkIdle(0)
	res2 := recompress(t, d, RecompressRequest{Type: RecompressIdle})
	if res2.Candidates != 0 || res2.Attempted != 0 {
		t.Fatalf("second run picked %d pages, tried %d", res2.Candidates, res2.Attempted)
	}
	if st := d.Stats(); st.ComprDataSize != after.ComprDataSize {
		t.Fatal("second run changed the data")
	}
	// A rewrite clears the incompressible flag.
	for i, k := range kinds {
		if k == kindRandom {
			if err := d.WriteAt(pages[i], uint64(i)*PageSize, nil); err != nil {
				t.Fatal(err)
			}
			if s := slotOf(d, i); s.flags&slotIncompressible != 0 {
				t.Fatal("rewritten page keeps the incompressible flag")
			}
			break
		}
	}
	checkStatsConsistent(t, d)
}

// TestRecompressTypes: type=huge picks huge pages only, idle or not;
// type=huge_idle only huge pages marked idle; no type: every page.
func TestRecompressTypes(t *testing.T) {
	const n = 200
	pages, kinds := mixedPages(t, n)
	d := newRecompDevice(t, n, "lz4", "zstd")
	writePages(t, d, pages)
	st := d.Stats()
	huge := st.HugePages
	res := recompress(t, d, RecompressRequest{Type: RecompressHugeIdle})
	if res.Candidates != 0 {
		t.Fatalf("huge_idle with nothing idle picked %d", res.Candidates)
	}
	res = recompress(t, d, RecompressRequest{Type: RecompressHuge, MaxPages: 3})
	if res.Candidates != huge || res.Attempted != 3 {
		t.Fatalf("huge: picked %d tried %d, want %d and 3", res.Candidates, res.Attempted, huge)
	}
	res = recompress(t, d, RecompressRequest{})
	if res.Candidates != int64(n)-st.SamePages-3 { // the three tried are done (shrunk or flagged)
		t.Fatalf("no type: picked %d, want %d", res.Candidates, int64(n)-st.SamePages-3)
	}
	verifyPages(t, d, pages)
	checkStatsConsistent(t, d)
	_ = kinds
}

// TestRecompressLargestFirstAndMaxPages: with max_pages=N, the N largest
// candidates are tried (their idle mark is gone), the rest are untouched.
func TestRecompressLargestFirstAndMaxPages(t *testing.T) {
	const n = 300
	pages, _ := mixedPages(t, n)
	d := newRecompDevice(t, n, "lz4", "zstd")
	writePages(t, d, pages)
	d.MarkIdle(0)
	type ps struct{ page, size int }
	var cands []ps
	for i := range pages {
		if s := slotOf(d, i); s.flags&slotIdle != 0 {
			cands = append(cands, ps{i, int(s.size)})
		}
	}
	sort.SliceStable(cands, func(a, b int) bool { return cands[a].size > cands[b].size })
	const max = 25
	res := recompress(t, d, RecompressRequest{Type: RecompressIdle, MaxPages: max})
	if res.Attempted != max || res.Candidates != int64(len(cands)) {
		t.Fatalf("tried %d of %d, want %d of %d", res.Attempted, res.Candidates, max, len(cands))
	}
	for i, c := range cands {
		tried := slotOf(d, c.page).flags&slotIdle == 0
		if tried != (i < max) {
			t.Fatalf("candidate %d (page %d, %d bytes): tried=%v, want the %d largest tried", i, c.page, c.size, tried, max)
		}
	}
	st := d.Stats()
	if st.Recomp.Attempted != max || st.Recomp.Scanned != int64(len(cands)) || st.Recomp.Runs != 1 {
		t.Fatalf("totals %+v", st.Recomp)
	}
	verifyPages(t, d, pages)
	checkStatsConsistent(t, d)
}

// TestRecompressThreshold follows zram: pages below the threshold are
// skipped without counting against max_pages, and a result is kept only if
// it is below the threshold.
func TestRecompressThreshold(t *testing.T) {
	const n = 400
	pages, _ := mixedPages(t, n)
	d := newRecompDevice(t, n, "lz4", "zstd")
	writePages(t, d, pages)
	d.MarkIdle(0)
	const threshold = 1500
	old := make([]slot, n)
	below := 0
	for i := range old {
		old[i] = slotOf(d, i)
		if old[i].flags&slotIdle != 0 && int(old[i].size) < threshold {
			below++
		}
	}
	res := recompress(t, d, RecompressRequest{Type: RecompressIdle, Threshold: threshold})
	if res.Skipped != int64(below) || res.Attempted != res.Candidates-int64(below) {
		t.Fatalf("%d pages below the threshold; result %+v", below, res)
	}
	for i := range old {
		s := slotOf(d, i)
		if old[i].flags&slotSame != 0 || old[i].handle == 0 {
			continue
		}
		moved := s.handle != old[i].handle
		if int(old[i].size) < threshold && moved {
			t.Fatalf("page %d (%d bytes) below the threshold was recompressed", i, old[i].size)
		}
		if moved && int(s.size) >= threshold {
			t.Fatalf("page %d kept a %d-byte result, not below threshold %d", i, s.size, threshold)
		}
	}
	if res.Recompressed == 0 {
		t.Fatal("nothing recompressed")
	}
	for _, bad := range []int{-1, HugeThreshold, 5000} {
		if _, err := d.Recompress(context.Background(), RecompressRequest{Threshold: bad}, nil); err == nil {
			t.Errorf("threshold %d accepted", bad)
		}
	}
	verifyPages(t, d, pages)
	checkStatsConsistent(t, d)
}

// TestRecompressPriority: priority= and algo= try only that priority;
// failures are final only when the highest priority was tried; a page moves
// up from priority 1 to 2 on a later run.
func TestRecompressPriority(t *testing.T) {
	const n = 250
	pages, kinds := mixedPages(t, n)
	d := newRecompDevice(t, n, "lz4", "lz4hc", "zstd")
	writePages(t, d, pages)

	res := recompress(t, d, RecompressRequest{Priority: 1})
	st := d.Stats()
	if st.PriorityPages[2] != 0 || st.PriorityPages[1] != res.Recompressed || res.Recompressed == 0 {
		t.Fatalf("priority=1: pages per priority %v, result %+v", st.PriorityPages, res)
	}
	if res.Incompressible != 0 || st.IncompressiblePages != 0 {
		t.Fatalf("priority=1 is not the highest: nothing may be flagged, got %d", res.Incompressible)
	}
	res = recompress(t, d, RecompressRequest{Algorithm: "zstd"}) // = priority 2
	st = d.Stats()
	if st.PriorityPages[2] != res.Recompressed || res.Recompressed == 0 {
		t.Fatalf("algo=zstd: pages per priority %v, result %+v", st.PriorityPages, res)
	}
	if res.Incompressible == 0 || st.IncompressiblePages != res.Incompressible {
		t.Fatalf("algo=zstd is the highest priority: random pages must be flagged: %+v", res)
	}
	for i, k := range kinds {
		if k == kindText {
			if s := slotOf(d, i); d.slotPrio(&s) != 2 {
				t.Fatalf("text page %d at priority %d after algo=zstd, want 2", i, d.slotPrio(&s))
			}
		}
	}
	if _, err := d.Recompress(context.Background(), RecompressRequest{Algorithm: "deflate"}, nil); !errors.Is(err, ErrNoRecompAlgorithm) {
		t.Fatalf("algo=deflate (not configured): %v", err)
	}
	if _, err := d.Recompress(context.Background(), RecompressRequest{Priority: 3}, nil); !errors.Is(err, ErrNoRecompAlgorithm) {
		t.Fatalf("priority=3 (not configured): %v", err)
	}
	bare := newRecompDevice(t, 4, "lz4")
	if _, err := bare.Recompress(context.Background(), RecompressRequest{}, nil); !errors.Is(err, ErrNoRecompAlgorithm) {
		t.Fatalf("no secondary algorithm: %v", err)
	}
	verifyPages(t, d, pages)
	checkStatsConsistent(t, d)

	// Pool references balance: once every page is gone, switching the
	// secondaries releases their old pools.
	released := d.CompressorsReleased()
	if err := d.Discard(0, n*PageSize); err != nil {
		t.Fatal(err)
	}
	for prio, algo := range []string{"deflate", "deflate"} {
		if err := d.SetRecompAlgorithm(prio+1, algo, zcomp.Params{}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.CompressorsReleased() - released; got != 2 {
		t.Fatalf("%d old secondary pools released, want 2: references leaked", got)
	}
}

// TestRecompressConcurrentIO: recompression loops while writers, trimmers
// and readers work on the same pages; every read sees the data last written
// (or zeros after a trim) and the stats agree with the slots at the end.
func TestRecompressConcurrentIO(t *testing.T) {
	const n = 256
	const workers = 4 // worker w owns pages p with p%workers == w
	pages, _ := mixedPages(t, n)
	d := newRecompDevice(t, n, "lz4", "lz4hc", "zstd")
	writePages(t, d, pages)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var runs int
	wg.Add(1)
	go func() {
		defer wg.Done()
		types := []RecompressType{0, RecompressIdle, RecompressHuge, RecompressHugeIdle}
		for i := 0; ctx.Err() == nil; i++ {
			d.MarkIdle(0)
			_, err := d.Recompress(ctx, RecompressRequest{Type: types[i%len(types)], Priority: i % 3}, nil)
			if err != nil && ctx.Err() == nil {
				t.Error(err)
				return
			}
			runs++
		}
	}()
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		go func() {
			r := rand.New(rand.NewPCG(uint64(w), 77))
			model := make(map[int][]byte)
			for p := w; p < n; p += workers {
				model[p] = pages[p]
			}
			got := make([]byte, PageSize)
			// 1500 operations, and on until some page was recompressed
			// beside them: without -race the I/O can finish before a
			// recompression run gets to its first page.
			start := time.Now()
			for i := 0; i < 1500 || (i%100 != 0 || d.Stats().Recomp.Recompressed == 0) && time.Since(start) < 30*time.Second; i++ {
				p := w + workers*r.IntN(n/workers)
				switch op := r.IntN(10); {
				case op < 3:
					src := pages[r.IntN(n)]
					if err := d.WriteAt(src, uint64(p)*PageSize, nil); err != nil {
						errc <- err
						return
					}
					model[p] = src
				case op < 4:
					if err := d.Discard(uint64(p)*PageSize, PageSize); err != nil {
						errc <- err
						return
					}
					model[p] = make([]byte, PageSize)
				default:
					if err := d.ReadAt(got, uint64(p)*PageSize); err != nil {
						errc <- err
						return
					}
					if !bytes.Equal(got, model[p]) {
						errc <- errors.New("read differs from the last write")
						return
					}
				}
			}
			for p, want := range model {
				if err := d.ReadAt(got, uint64(p)*PageSize); err != nil || !bytes.Equal(got, want) {
					errc <- errors.New("final read differs from the last write")
					return
				}
			}
			errc <- nil
		}()
	}
	for w := 0; w < workers; w++ {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	cancel()
	wg.Wait()
	t.Logf("%d recompress runs beside the I/O; totals %+v", runs, d.Stats().Recomp)
	checkNoMarks(t, d)
	checkStatsConsistent(t, d)
	if d.Stats().Recomp.Recompressed == 0 {
		t.Fatal("no page was recompressed during the test")
	}
}

// TestRecompressCancelAndPreempt: a cancelled run leaves no marks; a
// background run gives way to a manual one.
func TestRecompressCancelAndPreempt(t *testing.T) {
	const n = 400
	pages, _ := mixedPages(t, n)
	d := newRecompDevice(t, n, "lz4", "zstd")
	writePages(t, d, pages)

	ctx, cancel := context.WithCancel(context.Background())
	res, err := d.Recompress(ctx, RecompressRequest{}, func(r RecompressResult) {
		// Progress comes after the first page and then every 100 ms;
		// without -race the whole run takes less, so cancel at the first.
		if r.Done >= 1 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || res.Done >= n-int64(d.Stats().SamePages) {
		t.Fatalf("cancelled run: %v, %+v", err, res)
	}
	checkNoMarks(t, d)

	// A background run pacing itself slowly; a manual run arrives.
	started := make(chan struct{})
	var once sync.Once
	bgDone := make(chan RecompressResult)
	go func() {
		r, err := d.RecompressBackground(context.Background(), RecompressRequest{}, func(RecompressResult) {
			once.Do(func() { close(started) })
			time.Sleep(time.Millisecond)
		})
		if err != nil {
			t.Error(err)
		}
		bgDone <- r
	}()
	<-started
	if r, _ := d.RecompressBackground(context.Background(), RecompressRequest{}, nil); !r.Preempted || r.Candidates != 0 {
		t.Fatalf("second background run while one runs: %+v", r)
	}
	manual, err := d.Recompress(context.Background(), RecompressRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	bg := <-bgDone
	if !bg.Preempted {
		t.Fatalf("background run was not preempted: %+v", bg)
	}
	if manual.Attempted == 0 {
		t.Fatalf("manual run after preemption did nothing: %+v", manual)
	}
	checkNoMarks(t, d)
	verifyPages(t, d, pages)
	checkStatsConsistent(t, d)
	if st := d.Stats(); st.Recomp.BackgroundRuns != 1 || st.Recomp.CPU <= 0 {
		t.Fatalf("totals %+v", st.Recomp)
	}
}

// TestRecompressMemLimit: at mem_limit a smaller result that needs a new
// span cannot be stored; the page keeps its old object and the run goes on.
func TestRecompressMemLimit(t *testing.T) {
	const n = 200
	pages, _ := mixedPages(t, n)
	d := newRecompDevice(t, n, "lz4", "zstd")
	writePages(t, d, pages)
	if err := d.SetMemLimit(d.Stats().MemUsedTotal); err != nil {
		t.Fatal(err)
	}
	res := recompress(t, d, RecompressRequest{})
	t.Logf("at the limit: %+v", res)
	if res.Failed == 0 {
		t.Fatal("no attempt failed for memory at the limit")
	}
	verifyPages(t, d, pages)
	checkStatsConsistent(t, d)
}
