package pagestore

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fill writes a pattern determined by seed, so content can be checked later
// without keeping a copy of every object.
func fill(b []byte, seed uint64) {
	x := seed*0x9E3779B97F4A7C15 | 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
}

type obj struct {
	seed uint64
	size int
}

// model tracks what a test stored: handle -> (seed, size).
type model map[Handle]obj

func newStore(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func put(t testing.TB, s *Store, m model, seed uint64, size int) Handle {
	t.Helper()
	buf := make([]byte, size)
	fill(buf, seed)
	h, err := s.Put(buf)
	if err != nil {
		t.Fatalf("put %d bytes: %v", size, err)
	}
	if h == 0 {
		t.Fatal("put returned handle 0")
	}
	if _, dup := m[h]; dup {
		t.Fatalf("handle %#x issued twice", h)
	}
	m[h] = obj{seed, size}
	return h
}

func check(t testing.TB, s *Store, h Handle, o obj) {
	t.Helper()
	want := make([]byte, o.size)
	fill(want, o.seed)
	got := make([]byte, MaxObjectSize)
	if n := s.Read(h, got); n != o.size {
		t.Fatalf("handle %#x: read %d bytes, want %d", h, n, o.size)
	}
	if !bytes.Equal(got[:o.size], want) {
		t.Fatalf("handle %#x: content differs (size %d)", h, o.size)
	}
	if n := s.Size(h); n != o.size {
		t.Fatalf("handle %#x: Size %d, want %d", h, n, o.size)
	}
}

func checkAll(t testing.TB, s *Store, m model) {
	t.Helper()
	for h, o := range m {
		check(t, s, h, o)
	}
}

// checkStats verifies the accounting against the model.
func checkStats(t testing.TB, s *Store, m model) {
	t.Helper()
	st := s.Stats()
	var objBytes int64
	for _, o := range m {
		objBytes += int64(o.size)
	}
	if st.ObjBytes != objBytes || st.Objects != int64(len(m)) {
		t.Fatalf("stats: ObjBytes %d Objects %d, want %d %d", st.ObjBytes, st.Objects, objBytes, len(m))
	}
	var mem, freeable, objs, ob int64
	for _, c := range st.Classes {
		mem += c.Spans * int64(c.Pages) * PageSize
		freeable += c.Freeable * int64(c.Pages) * PageSize
		objs += c.Objects
		ob += c.ObjBytes
		if c.Objects > c.Spans*int64(c.ObjsPerSpan) || c.Objects < c.Spans { // empty spans are freed at once
			t.Fatalf("class %+v: objects do not fit its spans", c)
		}
		if want := (c.Spans*int64(c.ObjsPerSpan) - c.Objects) / int64(c.ObjsPerSpan); c.Freeable != want {
			t.Fatalf("class %+v: freeable %d, want %d", c, c.Freeable, want)
		}
	}
	if st.MemUsed != mem || st.MemUsed%PageSize != 0 {
		t.Fatalf("stats: MemUsed %d, spans add up to %d", st.MemUsed, mem)
	}
	if st.FreeableBytes != freeable {
		t.Fatalf("stats: FreeableBytes %d, classes say %d", st.FreeableBytes, freeable)
	}
	if objs != st.Objects || ob != st.ObjBytes {
		t.Fatalf("stats: classes sum to %d objects %d bytes, totals %d %d", objs, ob, st.Objects, st.ObjBytes)
	}
	if st.MemUsedMax < st.MemUsed {
		t.Fatalf("stats: MemUsedMax %d < MemUsed %d", st.MemUsedMax, st.MemUsed)
	}
	if st.MemUsed < st.ObjBytes {
		t.Fatalf("stats: MemUsed %d < ObjBytes %d", st.MemUsed, st.ObjBytes)
	}
}

func TestPutReadFree(t *testing.T) {
	s := newStore(t, Options{})
	m := model{}
	for size := 1; size <= MaxObjectSize; size += 7 {
		put(t, s, m, uint64(size), size)
	}
	put(t, s, m, 1, MaxObjectSize)
	checkAll(t, s, m)
	checkStats(t, s, m)
	for h := range m {
		s.Free(h)
		delete(m, h)
		if len(m)%50 == 0 {
			checkAll(t, s, m)
			checkStats(t, s, m)
		}
	}
	if st := s.Stats(); st.MemUsed != 0 || st.Objects != 0 || st.ObjBytes != 0 {
		t.Fatalf("after freeing everything: %+v", st)
	}
}

func TestPutErrors(t *testing.T) {
	s := newStore(t, Options{})
	for _, n := range []int{0, MaxObjectSize + 1} {
		if _, err := s.Put(make([]byte, n)); !errors.Is(err, ErrSize) {
			t.Fatalf("put %d bytes: %v, want ErrSize", n, err)
		}
	}
	if _, err := New(Options{Limit: -1}); err == nil {
		t.Fatal("negative limit accepted")
	}
	s.Close()
	if _, err := s.Put([]byte{1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("put after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestFreedHandlePanics(t *testing.T) {
	s := newStore(t, Options{})
	m := model{}
	h := put(t, s, m, 1, 100)
	put(t, s, m, 2, 100) // keeps h's table entry and span alive
	s.Free(h)
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "free handle") {
			t.Fatalf("read of freed handle: recover() = %v", r)
		}
	}()
	s.Read(h, make([]byte, 100))
}

func TestLimit(t *testing.T) {
	const limit = 1 << 20
	s := newStore(t, Options{Limit: limit})
	if s.Limit() != limit {
		t.Fatalf("Limit() = %d", s.Limit())
	}
	m := model{}
	buf := make([]byte, 2000)
	var seed uint64
	for {
		seed++
		fill(buf, seed)
		h, err := s.Put(buf)
		if errors.Is(err, ErrLimit) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		m[h] = obj{seed, len(buf)}
	}
	st := s.Stats()
	if st.MemUsed > limit || st.MemUsedMax > limit {
		t.Fatalf("MemUsed %d / max %d over limit %d", st.MemUsed, st.MemUsedMax, limit)
	}
	if int64(len(m))*2000 < limit*9/10 {
		t.Fatalf("only %d objects stored under a %d limit", len(m), limit)
	}
	checkAll(t, s, m)
	// Another class whose span does not fit in what is left: refused too.
	other := 0
	for n := 100; n <= MaxObjectSize; n += classStep {
		if c := s.classFor(n); c != s.classFor(len(buf)) && c.spanBytes > limit-st.MemUsed {
			other = n
			break
		}
	}
	if _, err := s.Put(make([]byte, other)); !errors.Is(err, ErrLimit) {
		t.Fatalf("put of %d bytes into a new class at the limit: %v", other, err)
	}
	// Freeing one object makes room for one more of the same class, no new span.
	for h := range m {
		s.Free(h)
		delete(m, h)
		break
	}
	put(t, s, m, 999, 1990)
	checkAll(t, s, m)
	checkStats(t, s, m)
	// Lowering the limit below MemUsed loses nothing; raising it lets Puts in.
	s.SetLimit(limit / 2)
	checkAll(t, s, m)
	if _, err := s.Put(make([]byte, 100)); !errors.Is(err, ErrLimit) {
		t.Fatalf("put over a lowered limit: %v", err)
	}
	s.SetLimit(0)
	put(t, s, m, 1000, 100)
	checkAll(t, s, m)
	checkStats(t, s, m)
}

func TestStatsMaxReset(t *testing.T) {
	s := newStore(t, Options{})
	m := model{}
	for i := range 1000 {
		put(t, s, m, uint64(i), 1+i*4%MaxObjectSize)
	}
	peak := s.Stats().MemUsed
	for h := range m {
		if len(m) <= 100 {
			break
		}
		s.Free(h)
		delete(m, h)
	}
	checkStats(t, s, m)
	st := s.Stats()
	if st.MemUsedMax != peak || st.MemUsed >= peak {
		t.Fatalf("MemUsedMax %d MemUsed %d, peak was %d", st.MemUsedMax, st.MemUsed, peak)
	}
	s.ResetMaxUsed()
	if st := s.Stats(); st.MemUsedMax != st.MemUsed {
		t.Fatalf("after reset: MemUsedMax %d MemUsed %d", st.MemUsedMax, st.MemUsed)
	}
	if st.MetadataBytes <= 0 || st.HandleTableBytes <= 0 || st.MetadataBytes < st.HandleTableBytes {
		t.Fatalf("metadata: %d (handle table %d)", st.MetadataBytes, st.HandleTableBytes)
	}
}

// residentPages asks the kernel how many pages of the store's arenas are in
// RAM (mincore), which is what "memory returned to the OS" means.
func residentPages(t testing.TB, s *Store) (resident, mapped int) {
	t.Helper()
	for _, p := range s.pools {
		if p == nil {
			continue
		}
		p.forEachArena(func(base unsafe.Pointer, n uintptr) {
			vec := make([]byte, n/PageSize)
			_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(base), n, uintptr(unsafe.Pointer(&vec[0])))
			if errno != 0 {
				t.Fatalf("mincore: %v", errno)
			}
			for _, v := range vec {
				resident += int(v & 1)
			}
			mapped += len(vec)
		})
	}
	return resident, mapped
}

func rssBytes(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skip(err)
	}
	f := strings.Fields(string(b))
	n, _ := strconv.ParseInt(f[1], 10, 64)
	return n * int64(os.Getpagesize())
}

func TestFreeAllReturnsMemory(t *testing.T) {
	s := newStore(t, Options{})
	rss0 := rssBytes(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var hs []Handle
	buf := make([]byte, MaxObjectSize)
	for range 40000 { // ~80 MiB of objects around 2 KiB
		n := 1 + rng.IntN(MaxObjectSize)
		fill(buf[:n], uint64(n))
		h, err := s.Put(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	full := s.Stats()
	res, _ := residentPages(t, s)
	if int64(res)*PageSize > full.MemUsed || int64(res)*PageSize < full.ObjBytes {
		t.Fatalf("resident %d pages, MemUsed %d ObjBytes %d", res, full.MemUsed, full.ObjBytes)
	}
	rss1 := rssBytes(t)
	rng.Shuffle(len(hs), func(i, j int) { hs[i], hs[j] = hs[j], hs[i] })
	for _, h := range hs {
		s.Free(h)
	}
	st := s.Stats()
	if st.MemUsed != 0 || st.Objects != 0 || st.Spans != 0 {
		t.Fatalf("after freeing everything: MemUsed %d Objects %d Spans %d", st.MemUsed, st.Objects, st.Spans)
	}
	if res, mapped := residentPages(t, s); res != 0 {
		t.Fatalf("%d of %d arena pages still resident", res, mapped)
	}
	rss2 := rssBytes(t)
	t.Logf("RSS: before %d MiB, full %d MiB (MemUsed %d MiB), after free %d MiB", rss0>>20, rss1>>20, full.MemUsed>>20, rss2>>20)
	// The Go heap and test bookkeeping move a little; the store's 80 MiB must go.
	if grown := rss2 - rss0; grown > full.MemUsed/10 {
		t.Fatalf("RSS still %d MiB above the start after freeing %d MiB", grown>>20, full.MemUsed>>20)
	}
}

func TestZeroAlloc(t *testing.T) {
	s := newStore(t, Options{Limit: 1 << 30, AutoCompact: true})
	buf := make([]byte, 2100)
	dst := make([]byte, MaxObjectSize)
	fill(buf, 3)
	// Keep some objects of the class live so spans persist, as in steady state.
	for range 100 {
		if _, err := s.Put(buf); err != nil {
			t.Fatal(err)
		}
	}
	allocs := testing.AllocsPerRun(1000, func() {
		h, err := s.Put(buf)
		if err != nil {
			t.Fatal(err)
		}
		s.Read(h, dst)
		_ = s.Size(h)
		s.Free(h)
	})
	if allocs != 0 {
		t.Fatalf("Put/Read/Free allocate %v times per run", allocs)
	}
	// Error paths that a full device hits on every write must not allocate either.
	s.SetLimit(1)
	big := make([]byte, 100)
	allocs = testing.AllocsPerRun(100, func() {
		if _, err := s.Put(big); !errors.Is(err, ErrLimit) {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("refused Put allocates %v times", allocs)
	}
}

// TestRandomSizes is the fuzz-ish test: random sizes 1..4096, random frees,
// content and stats checked throughout.
func TestRandomSizes(t *testing.T) {
	s := newStore(t, Options{})
	m := model{}
	rng := rand.New(rand.NewPCG(5, 6))
	var hs []Handle
	for i := range 20000 {
		if len(hs) > 0 && rng.IntN(3) == 0 {
			j := rng.IntN(len(hs))
			h := hs[j]
			check(t, s, h, m[h])
			s.Free(h)
			delete(m, h)
			hs[j] = hs[len(hs)-1]
			hs = hs[:len(hs)-1]
		} else {
			hs = append(hs, put(t, s, m, rng.Uint64(), 1+rng.IntN(MaxObjectSize)))
		}
		if i%2000 == 0 {
			checkAll(t, s, m)
			checkStats(t, s, m)
		}
	}
	checkAll(t, s, m)
	checkStats(t, s, m)
}

func FuzzStore(f *testing.F) {
	f.Add([]byte{1, 2, 3, 200, 255, 0, 17})
	f.Fuzz(func(t *testing.T, ops []byte) {
		s := newStore(t, Options{})
		m := model{}
		var hs []Handle
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i], int(ops[i+1])
			switch {
			case op < 160:
				size := 1 + (int(op)*256+arg)%MaxObjectSize
				hs = append(hs, put(t, s, m, uint64(i), size))
			case op < 240 && len(hs) > 0:
				j := arg % len(hs)
				s.Free(hs[j])
				delete(m, hs[j])
				hs[j] = hs[len(hs)-1]
				hs = hs[:len(hs)-1]
			default:
				s.Compact()
				checkAll(t, s, m)
			}
		}
		checkAll(t, s, m)
		checkStats(t, s, m)
	})
}
