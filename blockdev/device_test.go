package blockdev

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev/blocktest"
	"github.com/uzram/uzram/pagestore"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

func newTestDevice(t testing.TB, size int64, algo string) *Device {
	t.Helper()
	d, err := New(Config{Name: "t", Size: size, Algorithm: algo, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestDeviceModel runs random reads, writes, trims and write-zeroes of every
// size and alignment against a plain byte slice and checks they agree.
func TestDeviceModel(t *testing.T) {
	for _, algo := range []string{"lz4", "zstd"} {
		t.Run(algo, func(t *testing.T) {
			const size = 1 << 20
			d := newTestDevice(t, size, algo)
			model := make([]byte, size)
			r := rand.New(rand.NewPCG(1, 2))
			buf := make([]byte, 64<<10)
			for i := 0; i < 3000; i++ {
				off := uint64(r.IntN(size/SectorSize)) * SectorSize
				n := (1 + r.IntN(len(buf)/SectorSize)) * SectorSize
				n = min(n, size-int(off))
				switch op := r.IntN(10); {
				case op < 5:
					blocktest.Fill(r, buf[:n], r.IntN(4))
					if err := d.WriteAt(buf[:n], off, nil); err != nil {
						t.Fatalf("write %d@%d: %v", n, off, err)
					}
					copy(model[off:], buf[:n])
				case op < 7:
					if err := d.WriteZeroes(off, uint64(n), op == 6); err != nil {
						t.Fatalf("discard %d@%d: %v", n, off, err)
					}
					clear(model[off : off+uint64(n)])
				default:
					if err := d.ReadAt(buf[:n], off); err != nil {
						t.Fatalf("read %d@%d: %v", n, off, err)
					}
					if !bytes.Equal(buf[:n], model[off:off+uint64(n)]) {
						t.Fatalf("read %d@%d differs from the model", n, off)
					}
				}
			}
			all := make([]byte, size)
			if err := d.ReadAt(all, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(all, model) {
				t.Fatal("device differs from the model at the end")
			}
			checkStatsConsistent(t, d)
		})
	}
}

// checkStatsConsistent fails t unless the statistics agree with the slot
// table.
func checkStatsConsistent(t testing.TB, d *Device) {
	t.Helper()
	if err := d.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestSameFilledAndHuge(t *testing.T) {
	d := newTestDevice(t, 16*PageSize, "lz4")
	page := make([]byte, PageSize)
	if err := d.WriteAt(page, 0, nil); err != nil { // zeros
		t.Fatal(err)
	}
	blocktest.Fill(rand.New(rand.NewPCG(3, 4)), page, 1)
	if err := d.WriteAt(page, PageSize, nil); err != nil {
		t.Fatal(err)
	}
	st := d.Stats()
	if st.SamePages != 2 || st.MemUsedTotal != 0 || st.ComprDataSize != 0 {
		t.Fatalf("same-filled pages should cost nothing: %+v", st)
	}
	got := make([]byte, PageSize)
	if err := d.ReadAt(got, PageSize); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("same-filled page read back wrong (err %v)", err)
	}
	blocktest.Fill(rand.New(rand.NewPCG(5, 6)), page, 2)
	if err := d.WriteAt(page, 2*PageSize, nil); err != nil {
		t.Fatal(err)
	}
	st = d.Stats()
	if st.HugePages != 1 || st.HugePagesSince != 1 || st.ComprDataSize != PageSize {
		t.Fatalf("random page should be stored raw and counted huge: %+v", st)
	}
	if err := d.ReadAt(got, 2*PageSize); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("huge page read back wrong (err %v)", err)
	}
	if err := d.Discard(0, 3*PageSize); err != nil {
		t.Fatal(err)
	}
	st = d.Stats()
	if st.PagesStored != 0 || st.HugePages != 0 || st.HugePagesSince != 1 || st.NotifyFree != 3 || st.MemUsedTotal < 0 {
		t.Fatalf("after trim: %+v", st)
	}
}

func TestRangeErrors(t *testing.T) {
	d := newTestDevice(t, 4*PageSize, "lz4")
	buf := make([]byte, PageSize)
	for _, off := range []uint64{4 * PageSize, 3*PageSize + 1, ^uint64(0) - 10} {
		if err := d.ReadAt(buf, off); !errors.Is(err, ErrRange) {
			t.Errorf("read at %d: %v, want ErrRange", off, err)
		}
		if err := d.WriteAt(buf, off, nil); !errors.Is(err, ErrRange) {
			t.Errorf("write at %d: %v, want ErrRange", off, err)
		}
		if err := d.Discard(off, PageSize); !errors.Is(err, ErrRange) {
			t.Errorf("discard at %d: %v, want ErrRange", off, err)
		}
	}
	if got := d.Stats().InvalidIO; got != 9 {
		t.Errorf("invalid_io = %d, want 9", got)
	}
}

// TestConcurrentPages hammers overlapping pages from many goroutines, each
// owning its own sectors within shared pages, so sub-page read-modify-write
// races would corrupt a neighbour's sectors.
func TestConcurrentPages(t *testing.T) {
	const pages = 64
	const workers = 8 // each owns sector w of every page
	d := newTestDevice(t, pages*PageSize, "lz4")
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			sector := make([]byte, SectorSize)
			got := make([]byte, SectorSize)
			last := make([]byte, pages) // value byte last written per page
			for i := 0; i < 2000; i++ {
				p := r.IntN(pages)
				off := uint64(p*PageSize + w*SectorSize)
				if r.IntN(3) == 0 {
					if err := d.ReadAt(got, off); err != nil {
						t.Error(err)
						return
					}
					for _, b := range got {
						if b != last[p] {
							t.Errorf("worker %d page %d: read %d, want %d", w, p, b, last[p])
							return
						}
					}
					continue
				}
				v := byte(r.Uint32())
				for j := range sector {
					sector[j] = v
				}
				if err := d.WriteAt(sector, off, nil); err != nil {
					t.Error(err)
					return
				}
				last[p] = v
			}
		}()
	}
	wg.Wait()
	checkStatsConsistent(t, d)
}

func TestSameFilledDetection(t *testing.T) {
	p := make([]byte, PageSize+1)
	for _, base := range []int{0, 1} { // aligned and unaligned pages
		page := p[base : base+PageSize]
		clear(page)
		if w, ok := sameFilled(page); !ok || w != 0 {
			t.Fatalf("zero page: %x %v", w, ok)
		}
		for i := 0; i < PageSize; i += 8 {
			copy(page[i:], []byte{1, 2, 3, 4, 5, 6, 7, 8})
		}
		w, ok := sameFilled(page)
		if !ok {
			t.Fatal("patterned page not detected")
		}
		out := make([]byte, PageSize)
		fillWord(out, w)
		if !bytes.Equal(out, page) {
			t.Fatal("fillWord does not restore the page")
		}
		page[PageSize/2] ^= 1
		if _, ok := sameFilled(page); ok {
			t.Fatal("page with one differing byte detected as same-filled")
		}
	}
}

func TestPageOpsAllocateNothing(t *testing.T) {
	d := newTestDevice(t, 256*PageSize, "lz4")
	page := make([]byte, PageSize)
	blocktest.Fill(rand.New(rand.NewPCG(7, 8)), page, 3)
	sub := make([]byte, SectorSize)
	i := 0
	allocs := testing.AllocsPerRun(500, func() {
		off := uint64(i%256) * PageSize
		i++
		page[0] = byte(i)
		if err := d.WriteAt(page, off, nil); err != nil {
			t.Fatal(err)
		}
		if err := d.ReadAt(page, off); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteAt(sub, off+SectorSize, nil); err != nil {
			t.Fatal(err)
		}
		if err := d.ReadAt(sub, off+2*SectorSize); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("page write+read allocates %.1f times per run, want 0", allocs)
	}
}

func BenchmarkWritePage(b *testing.B) {
	d := newTestDevice(b, 1<<30, "lz4")
	page := make([]byte, PageSize)
	blocktest.Fill(rand.New(rand.NewPCG(7, 8)), page, 3)
	b.SetBytes(PageSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		page[0] = byte(i)
		if err := d.WriteAt(page, uint64(i%(1<<18))*PageSize, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadPage(b *testing.B) {
	d := newTestDevice(b, 64<<20, "lz4")
	page := make([]byte, PageSize)
	r := rand.New(rand.NewPCG(7, 8))
	for p := 0; p < 1<<14; p++ {
		blocktest.Fill(r, page, 3)
		d.WriteAt(page, uint64(p)*PageSize, nil)
	}
	b.SetBytes(PageSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := d.ReadAt(page, uint64(i%(1<<14))*PageSize); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMemLimit: at the limit, writes that need memory fail with ErrNoSpace
// and change nothing; rewrites that fit the old object's size class, zero
// pages, reads and discards keep working.
func TestMemLimit(t *testing.T) {
	d, err := New(Config{Name: "lim", Size: 8 << 20, MemLimit: 256 << 10, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	page := func(seed uint64) []byte {
		p := make([]byte, PageSize)
		r := rand.New(rand.NewPCG(seed, 1))
		for i := 0; i < PageSize; i += 2 {
			p[i] = byte(r.Uint32())
		}
		return p
	}
	var n uint64
	for ; ; n++ {
		err := d.WriteAt(page(n), n*PageSize, nil)
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	st := d.Stats()
	if st.MemUsedTotal > st.MemLimit || st.FailedWrites != 1 {
		t.Fatalf("at limit: %+v", st)
	}
	got := make([]byte, PageSize)
	if err := d.ReadAt(got, n*PageSize); err != nil || !bytes.Equal(got, make([]byte, PageSize)) {
		t.Fatalf("refused page is not untouched: %v", err)
	}
	// A rewrite of page 0 with different data of the same compressibility
	// lands in the same class (or a smaller one, which still fits).
	p0 := page(1 << 40)
	if err := d.WriteAt(p0, 0, nil); err != nil {
		t.Fatalf("same-class rewrite at the limit: %v", err)
	}
	if err := d.WriteAt(make([]byte, PageSize), n*PageSize, nil); err != nil {
		t.Fatalf("zero page at the limit: %v", err)
	}
	for i := uint64(0); i < n; i++ {
		want := page(i)
		if i == 0 {
			want = p0
		}
		if err := d.ReadAt(got, i*PageSize); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("page %d lost at the limit (err %v)", i, err)
		}
	}
	if err := d.Discard(0, n*PageSize); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(page(n), n*PageSize, nil); err != nil {
		t.Fatalf("write after discarding everything: %v", err)
	}
	checkStatsConsistent(t, d)
}

// pageCompressingTo finds a page that algo compresses to exactly n bytes:
// random bytes after a run of zeros, the run's length searched.
func pageCompressingTo(t *testing.T, algo string, n int) []byte {
	t.Helper()
	b, err := zcomp.Lookup(algo)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := b.NewContext(zcomp.Params{})
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	page, out := make([]byte, PageSize), make([]byte, 2*PageSize)
	for seed := uint64(1); seed < 50; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		for i := range page {
			page[i] = byte(r.Uint32())
		}
		for zeros := 0; zeros < PageSize; zeros++ {
			page[zeros] = 0
			m, err := ctx.Compress(out, page)
			if err != nil {
				t.Fatal(err)
			}
			if m == n {
				return page
			}
			if m < n {
				break // past it: the size fell by more than one byte
			}
		}
	}
	t.Fatalf("no page found that %s compresses to %d bytes", algo, n)
	return nil
}

// TestHugeBoundary: as in zram, a page that compresses to huge_class_size
// (HugeThreshold) bytes or more is stored raw, one byte less compressed.
func TestHugeBoundary(t *testing.T) {
	d := newTestDevice(t, 1<<20, "lz4")
	for i, c := range []struct {
		compressed int
		huge       bool
	}{{HugeThreshold, true}, {HugeThreshold - 1, false}, {HugeThreshold + 1, true}} {
		page := pageCompressingTo(t, "lz4", c.compressed)
		if err := d.WriteAt(page, uint64(i)*PageSize, nil); err != nil {
			t.Fatal(err)
		}
		s := d.slots[i]
		if huge := s.flags&slotHuge != 0; huge != c.huge {
			t.Errorf("a page compressing to %d bytes: huge %v, want %v (stored %d bytes)", c.compressed, huge, c.huge, s.size)
		}
		got := make([]byte, PageSize)
		if err := d.ReadAt(got, uint64(i)*PageSize); err != nil || !bytes.Equal(got, page) {
			t.Fatalf("page %d reads back wrong (err %v)", i, err)
		}
	}
	checkStatsConsistent(t, d)
}

// TestWritePartial: writes that stop short of store memory (the kernel then
// sends the rest again, as ublk does) store exactly the leading bytes they
// report, whole pages, and leave the rest of the range as it was; one that
// would wait for its first page changes nothing.
func TestWritePartial(t *testing.T) {
	const size, chunk = 48 << 20, 512 << 10
	// As under swap: every time the reserve runs dry, memory is short.
	storeShort = func(*pagestore.Store) bool { return true }
	t.Cleanup(func() { storeShort = (*pagestore.Store).MemoryShort })
	d := newTestDevice(t, size, "lz4")
	model := make([]byte, size)
	r := rand.New(rand.NewPCG(5, 5))
	var partial, waits int
	buf := make([]byte, chunk)
	for round := 0; round < 2; round++ {
		for off := 0; off < size; off += chunk {
			blocktest.Fill(r, buf, blocktest.Random) // huge pages: the most store memory per page
			for done := 0; done < chunk; {
				n, err := d.WritePartial(buf[done:], uint64(off+done), nil)
				if errors.Is(err, ErrWouldWait) {
					// Nothing stored: as the kernel would, come back later.
					waits++
					got := make([]byte, chunk-done)
					if n != 0 || d.ReadAt(got, uint64(off+done)) != nil || !bytes.Equal(got, model[off+done:off+chunk]) {
						t.Fatalf("a write that would wait stored %d bytes or changed the range", n)
					}
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					t.Fatalf("write at %d: %v", off+done, err)
				}
				if n%PageSize != 0 || n == 0 {
					t.Fatalf("a partial write of %d bytes", n)
				}
				copy(model[off+done:], buf[done:done+n])
				if done+n < chunk {
					partial++
					// What was not stored still reads as before.
					got := make([]byte, chunk-done-n)
					if err := d.ReadAt(got, uint64(off+done+n)); err != nil || !bytes.Equal(got, model[off+done+n:off+chunk]) {
						t.Fatalf("after a partial write of %d bytes at %d, the rest changed (err %v)", n, off+done, err)
					}
				}
				done += n
			}
		}
	}
	all := make([]byte, size)
	if err := d.ReadAt(all, 0); err != nil || !bytes.Equal(all, model) {
		t.Fatalf("the device differs from the model (err %v)", err)
	}
	checkStatsConsistent(t, d)
	if st := d.Stats(); st.PartialWrites != int64(partial) {
		t.Fatalf("PartialWrites %d, the test saw %d", st.PartialWrites, partial)
	}
	if partial == 0 {
		t.Fatal("no write stopped short: the test did not outrun the refiller")
	}
	t.Logf("%d stops short of store memory and %d writes that would wait, over %d writes", partial, waits, 2*size/chunk)
}
