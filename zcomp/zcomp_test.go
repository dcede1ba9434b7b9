package zcomp

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// hugeThreshold is about the dst the device passes: zram's huge class size
// for 4 KiB pages, blockdev.HugeThreshold (which this package cannot import).
const hugeThreshold = 3632

// testLevels are the levels every round-trip test covers, per backend:
// the default, the ends of the range and a few in between.
var testLevels = map[string][]int{
	"lz4":     {0, 1, 8, lz4MaxAcceleration},
	"lz4hc":   {0, 1, 4, 9, 12, 16},
	"zstd":    {0, 1, 3, 6, 10, 22},
	"deflate": {0, 1, 2, 3, 4, 5, 6, 7, 8, 9},
}

// pageKind is one named 4 KiB test page.
type pageKind struct {
	name string
	data []byte
}

var (
	pagesOnce sync.Once
	pagesVal  []pageKind
)

// binaryFile is a real executable to take pages from: the Go tool if it is
// where the figures in docs/benchmarks.md took it from, else this test binary.
func binaryFile(tb testing.TB) string {
	for _, p := range []string{"/usr/local/go/bin/go", filepath.Join(runtime.GOROOT(), "bin", "go")} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// textFile is real text: Go source from GOROOT, else this package's source.
func textFile() string {
	p := filepath.Join(runtime.GOROOT(), "src", "net", "http", "server.go")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "zstd.go"
}

func readPage(tb testing.TB, path string, off int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, PageSize)
	if _, err := f.ReadAt(page, off); err != nil {
		tb.Fatalf("%s at %d: %v", path, off, err)
	}
	return page
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// testPages are the page kinds the device sees: zeros (handled as
// same-filled upstream, but a backend must still cope), text, random,
// half random half text, and machine code.
func testPages(tb testing.TB) []pageKind {
	pagesOnce.Do(func() {
		text := readPage(tb, textFile(), 8192)
		half := slices.Clone(text)
		copy(half[PageSize/2:], randomBytes(2, PageSize/2))
		pagesVal = []pageKind{
			{"zeros", make([]byte, PageSize)},
			{"text", text},
			{"random", randomBytes(1, PageSize)},
			{"half", half},
			{"binary", readPage(tb, binaryFile(tb), 1<<20)},
			{"short", []byte("a page need not be full: short inputs must round-trip too")},
			{"empty", []byte{}},
		}
	})
	return pagesVal
}

func newCtx(tb testing.TB, name string, p Params) Context {
	tb.Helper()
	b, err := Lookup(name)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := b.NewContext(p)
	if err != nil {
		tb.Fatalf("%s %+v: %v", name, p.Level, err)
	}
	tb.Cleanup(c.Close)
	return c
}

// canaryDst returns a dst of n bytes carved from a larger buffer, and a check
// that nothing past dst was written, even within its capacity.
func canaryDst(n int) ([]byte, func() bool) {
	buf := make([]byte, n+64)
	for i := n; i < len(buf); i++ {
		buf[i] = 0xA5
	}
	dst := buf[:n]
	return dst, func() bool {
		for _, c := range buf[n:] {
			if c != 0xA5 {
				return false
			}
		}
		return true
	}
}

func TestRegistry(t *testing.T) {
	want := []string{"deflate", "lz4", "lz4hc", "zstd"}
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	if _, err := Lookup("lzo-rle"); err == nil || !strings.Contains(err.Error(), "known: deflate, lz4, lz4hc, zstd") {
		t.Fatalf("Lookup(unknown) = %v", err)
	}
	if _, err := Lookup(Default); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, name := range Names() {
		for _, level := range testLevels[name] {
			c := newCtx(t, name, Params{Level: level})
			for _, pk := range testPages(t) {
				comp := make([]byte, 2*PageSize)
				n, err := c.Compress(comp, pk.data)
				if err != nil {
					t.Fatalf("%s/%d/%s: compress: %v", name, level, pk.name, err)
				}
				// The device's dst: the same bytes if they fit, else ErrNoSpace.
				small := make([]byte, hugeThreshold)
				m, err := c.Compress(small, pk.data)
				switch {
				case n <= hugeThreshold && (err != nil || !bytes.Equal(small[:m], comp[:n])):
					t.Errorf("%s/%d/%s: %d bytes, but into %d: %d bytes, %v", name, level, pk.name, n, hugeThreshold, m, err)
				case n > hugeThreshold && !errors.Is(err, ErrNoSpace):
					t.Errorf("%s/%d/%s: %d bytes into %d: %v, want ErrNoSpace", name, level, pk.name, n, hugeThreshold, err)
				}
				dst, ok := canaryDst(PageSize)
				m, err = c.Decompress(dst, comp[:n])
				if err != nil {
					t.Fatalf("%s/%d/%s: decompress: %v", name, level, pk.name, err)
				}
				if !bytes.Equal(dst[:m], pk.data) {
					t.Fatalf("%s/%d/%s: round trip differs (%d bytes back, want %d)", name, level, pk.name, m, len(pk.data))
				}
				if !ok() {
					t.Fatalf("%s/%d/%s: decompress wrote past dst", name, level, pk.name)
				}
				// Sanity of the defaults (high lz4 accelerations may not compress).
				if level == 0 && (pk.name == "zeros" && n > 128 || pk.name == "text" && n > PageSize*3/4) {
					t.Errorf("%s/%s: %d bytes is poor compression", name, pk.name, n)
				}
			}
		}
	}
}

// TestContextReuse runs many pages through one context in a mixed order: a
// context must carry nothing from one page to the next.
func TestContextReuse(t *testing.T) {
	pages := testPages(t)
	for _, name := range Names() {
		c := newCtx(t, name, Params{})
		b, _ := Lookup(name)
		r := rand.New(rand.NewSource(3))
		comp := make([]byte, 2*PageSize)
		want := make([]byte, 2*PageSize)
		out := make([]byte, PageSize)
		for i := 0; i < 100; i++ {
			pk := pages[r.Intn(len(pages))]
			n, err := c.Compress(comp, pk.data)
			if err != nil {
				t.Fatal(err)
			}
			// Deterministic: a used context encodes as a fresh one would.
			fresh, err := b.NewContext(Params{})
			if err != nil {
				t.Fatal(err)
			}
			fn, err := fresh.Compress(want, pk.data)
			fresh.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(comp[:n], want[:fn]) {
				t.Fatalf("%s: page %d (%s): used context output differs from a fresh one", name, i, pk.name)
			}
			m, err := c.Decompress(out, comp[:n])
			if err != nil || !bytes.Equal(out[:m], pk.data) {
				t.Fatalf("%s: page %d (%s): round trip failed: %v", name, i, pk.name, err)
			}
		}
	}
}

func TestNoSpace(t *testing.T) {
	random := randomBytes(7, PageSize)
	for _, name := range Names() {
		for _, level := range testLevels[name] {
			c := newCtx(t, name, Params{Level: level})
			for _, size := range []int{0, 1, 16, 1024, hugeThreshold, PageSize} {
				dst, ok := canaryDst(size)
				n, err := c.Compress(dst, random)
				if !errors.Is(err, ErrNoSpace) || n != 0 {
					t.Errorf("%s/%d: random page into %d bytes: n=%d err=%v, want ErrNoSpace", name, level, size, n, err)
				}
				if !ok() {
					t.Errorf("%s/%d: compress wrote past a %d-byte dst", name, level, size)
				}
			}
		}
	}
}

// TestCorrupt feeds each backend broken versions of valid pages. Without a
// checksum a flipped bit may still decode, so the contract tested is: never
// panic, never write past dst, every error wraps ErrCorrupt, and truncation
// never passes for the whole page.
func TestCorrupt(t *testing.T) {
	pages := testPages(t)
	for _, name := range Names() {
		c := newCtx(t, name, Params{})
		for _, pk := range pages {
			if len(pk.data) != PageSize {
				continue
			}
			comp := make([]byte, 2*PageSize)
			n, err := c.Compress(comp, pk.data)
			if err != nil {
				t.Fatal(err)
			}
			valid := comp[:n]
			check := func(what string, src []byte) (int, error) {
				t.Helper()
				dst, ok := canaryDst(PageSize)
				m, err := c.Decompress(dst, src)
				if err != nil && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s/%s: %s: error does not wrap ErrCorrupt: %v", name, pk.name, what, err)
				}
				if err != nil && m != 0 {
					t.Fatalf("%s/%s: %s: n=%d with an error", name, pk.name, what, m)
				}
				if m > PageSize || !ok() {
					t.Fatalf("%s/%s: %s: wrote past dst", name, pk.name, what)
				}
				return m, err
			}
			for cut := 0; cut < len(valid); cut++ {
				if m, err := check("truncated", valid[:cut]); err == nil && m == PageSize {
					// A short stream decoding to the full page would be a decoder bug.
					t.Fatalf("%s/%s: truncated to %d of %d bytes decoded a whole page", name, pk.name, cut, len(valid))
				}
			}
			// Every bit of the first bytes (headers, first tokens), then one
			// bit per byte, varying which, to keep the race run short.
			flipped := slices.Clone(valid)
			for i := range flipped {
				for bit := 0; bit < 8; bit++ {
					if i >= 32 && bit != i%8 {
						continue
					}
					flipped[i] ^= 1 << bit
					check("bit flip", flipped)
					flipped[i] ^= 1 << bit
				}
			}
			// Too small a dst for the page is corrupt too, not an overrun.
			if pk.name != "random" {
				dst, ok := canaryDst(PageSize / 2)
				if _, err := c.Decompress(dst, valid); !errors.Is(err, ErrCorrupt) || !ok() {
					t.Errorf("%s/%s: decompress into half a page: %v", name, pk.name, err)
				}
			}
		}
		// Plain garbage must be refused outright.
		for _, g := range [][]byte{{}, {0xff}, bytes.Repeat([]byte{0xff}, 64), []byte("definitely not compressed")} {
			if _, err := check0(c, g); err == nil {
				t.Errorf("%s: garbage %q decoded without error", name, g)
			}
		}
	}
}

func check0(c Context, src []byte) (int, error) {
	return c.Decompress(make([]byte, PageSize), src)
}

func TestValidateLevel(t *testing.T) {
	cases := []struct {
		name   string
		level  int
		ok     bool
		errHas string
	}{
		{"lz4", 0, true, ""},
		{"lz4", 1, true, ""},
		{"lz4", 65537, true, ""},
		{"lz4", 65538, false, "want 1..65537"},
		{"lz4", -1, false, "want 1..65537"},
		{"lz4hc", 16, true, ""},
		{"lz4hc", 17, false, "want 1..16"},
		{"zstd", 22, true, ""},
		{"zstd", 23, false, "want 1..22"},
		{"zstd", -5, false, "want 1..22"},
		{"deflate", 9, true, ""},
		{"deflate", 10, false, "want 1..9"},
		{"nope", 1, false, "unknown algorithm"},
	}
	for _, tc := range cases {
		err := ValidateLevel(tc.name, tc.level)
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), tc.errHas)) {
			t.Errorf("ValidateLevel(%s, %d) = %v", tc.name, tc.level, err)
		}
		if b, lerr := Lookup(tc.name); lerr == nil {
			c, err := b.NewContext(Params{Level: tc.level})
			if (err == nil) != tc.ok {
				t.Errorf("%s.NewContext(level=%d) = %v, ValidateLevel disagrees", tc.name, tc.level, err)
			}
			if c != nil {
				c.Close()
			}
		}
	}
}

// TestZeroAlloc proves the hot path allocates nothing once a context exists:
// compressing (fitting or not), and decompressing, on every backend.
func TestZeroAlloc(t *testing.T) {
	if testing.Short() {
		t.Skip("alloc counts need a quiet run")
	}
	text := testPages(t)[1].data
	random := testPages(t)[2].data
	dict := readDict(t)
	for _, name := range Names() {
		params := []Params{{}}
		for _, l := range testLevels[name] {
			params = append(params, Params{Level: l})
		}
		params = append(params, Params{Dict: dict})
		if name == "lz4" || name == "lz4hc" {
			params = append(params, Params{Level: 1, Dict: dict}, Params{Level: testLevels[name][len(testLevels[name])-1], Dict: dict})
		}
		for _, p := range params {
			c := newCtx(t, name, p)
			dst := make([]byte, 2*PageSize)
			small := make([]byte, hugeThreshold)
			out := make([]byte, PageSize)
			n, err := c.Compress(dst, text)
			if err != nil {
				t.Fatal(err)
			}
			comp := slices.Clone(dst[:n])
			for _, tc := range []struct {
				what string
				f    func()
			}{
				{"compress", func() { _, _ = c.Compress(dst, text) }},
				{"compress ErrNoSpace", func() { _, _ = c.Compress(small, random) }},
				{"decompress", func() { _, _ = c.Decompress(out, comp) }},
			} {
				if raceEnabled && name == "zstd" && tc.what == "decompress" {
					continue // borrows tables from sync.Pool, see zstd.go
				}
				if a := testing.AllocsPerRun(50, tc.f); a != 0 {
					t.Errorf("%s level=%d dict=%v: %s: %.1f allocs/op, want 0", name, p.Level, p.Dict != nil, tc.what, a)
				}
			}
		}
	}
}
