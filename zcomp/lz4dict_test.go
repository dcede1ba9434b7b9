package zcomp

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// lz4DictCase is one dictionary the lz4 dictionary tests use.
type lz4DictCase struct {
	name string
	dict []byte
}

// lz4Dicts are dictionaries of every shape: text the pages share words
// with, one byte, shorter than a match needs, random bytes, exactly the
// 60 KiB window, and larger than it (only its end counts).
func lz4Dicts(tb testing.TB) []lz4DictCase {
	text := readDict(tb)
	big := append(randomBytes(41, 80<<10), text...)
	return []lz4DictCase{
		{"text16K", text},
		{"1byte", []byte{'e'}},
		{"3bytes", []byte("the")},
		{"random", randomBytes(42, 8<<10)},
		{"window", append(randomBytes(43, lz4DictMax-len(text)), text...)},
		{"96K", big},
	}
}

// lz4DictImpl is one dictionary encoder at one setting: lz4 at an
// acceleration or lz4hc at a level.
type lz4DictImpl struct {
	name string
	f    func(dict []byte) func(dst, src []byte) (int, error)
}

func lz4DictImpls() []lz4DictImpl {
	var impls []lz4DictImpl
	for _, accel := range []int{1, 2, 8, lz4MaxAcceleration} {
		impls = append(impls, lz4DictImpl{fmt.Sprintf("lz4/accel=%d", accel), func(dict []byte) func(dst, src []byte) (int, error) {
			e := newLZ4DictEncoder(dict)
			return func(dst, src []byte) (int, error) { return e.compress(dst, src, accel) }
		}})
	}
	for _, level := range []int{1, 4, 9, 16} {
		impls = append(impls, lz4DictImpl{fmt.Sprintf("lz4hc/level=%d", level), func(dict []byte) func(dst, src []byte) (int, error) {
			return newLZ4HCDictEncoder(dict, 1<<(level-1)).compress
		}})
	}
	return impls
}

// lz4DictCheck checks a block compressed against dict: by the letter of the
// spec, with pierrec's decoder, and that pierrec's decoder without the
// dictionary does not silently give the input back when the block needs it.
func lz4DictCheck(tb testing.TB, what string, block, src, dict []byte) {
	tb.Helper()
	// Offsets reach 64 KiB back at most: the spec check needs no more.
	maxOff, err := lz4SpecCheckDict(block, src, lz4DictTail(dict))
	if err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
	out := make([]byte, len(src)+64)
	m, err := lz4.UncompressBlockWithDict(block, out, dict)
	if err != nil || !bytes.Equal(out[:m], src) {
		tb.Fatalf("%s: pierrec's decoder with the dictionary: %d bytes back, %v", what, m, err)
	}
	if maxOff > len(src) {
		if m, err := lz4.UncompressBlock(block, out); err == nil && bytes.Equal(out[:m], src) {
			tb.Fatalf("%s: offset %d reaches into the dictionary, yet decodes without it", what, maxOff)
		}
	}
}

// lz4DictInputs are the page-sized inputs of the round-trip corpus.
func lz4DictInputs(tb testing.TB) []pageKind {
	var in []pageKind
	for _, pk := range lz4PageInputs(tb) {
		if len(pk.data) <= PageSize {
			in = append(in, pk)
		}
	}
	return in
}

// TestLZ4DictRoundTrip: every page kind, with every dictionary, through both
// encoders, one context reused across pages as the device does; every block
// also fails cleanly, writing nothing past dst, when dst is one byte short.
func TestLZ4DictRoundTrip(t *testing.T) {
	inputs := lz4DictInputs(t)
	for _, dc := range lz4Dicts(t) {
		for _, impl := range lz4DictImpls() {
			if raceEnabled && !strings.HasSuffix(impl.name, "=1") {
				continue // ten times slower; the other settings run without -race
			}
			compress := impl.f(dc.dict)
			for _, in := range inputs {
				what := fmt.Sprintf("%s dict=%s %s (%d bytes)", impl.name, dc.name, in.name, len(in.data))
				dst := make([]byte, lz4.CompressBlockBound(len(in.data)))
				n, err := compress(dst, in.data)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				block := dst[:n]
				lz4DictCheck(t, what, block, in.data, dc.dict)
				short, ok := canaryDst(n - 1)
				if m, err := compress(short, in.data); !errors.Is(err, ErrNoSpace) || m != 0 || !ok() {
					t.Fatalf("%s: into %d bytes: n=%d err=%v canary=%v", what, n-1, m, err, ok())
				}
				// The failed call must not have disturbed the next one.
				if m, err := compress(dst, in.data); err != nil || !bytes.Equal(dst[:m], block) {
					t.Fatalf("%s: not deterministic after ErrNoSpace: %v", what, err)
				}
			}
		}
	}
}

// TestLZ4DictContext goes through the backends: Compress and Decompress of
// pages, and of an input over a page, which is compressed without the
// dictionary yet decodes with it.
func TestLZ4DictContext(t *testing.T) {
	dict := readDict(t)
	pages := laterPages(t)
	for _, pk := range testPages(t) {
		pages = append(pages, pk.data)
	}
	big := bytes.Repeat(laterPages(t)[0], 20) // 80 KiB
	for _, name := range []string{"lz4", "lz4hc"} {
		for _, level := range testLevels[name] {
			c := newCtx(t, name, Params{Level: level, Dict: dict})
			for _, src := range append(pages, big) {
				comp := make([]byte, lz4.CompressBlockBound(len(src)))
				n, err := c.Compress(comp, src)
				if err != nil {
					t.Fatalf("%s level %d, %d bytes: %v", name, level, len(src), err)
				}
				out := make([]byte, len(src))
				if m, err := c.Decompress(out, comp[:n]); err != nil || !bytes.Equal(out[:m], src) {
					t.Fatalf("%s level %d, %d bytes: round trip: %v", name, level, len(src), err)
				}
				if m, err := lz4.UncompressBlockWithDict(comp[:n], out, dict); err != nil || !bytes.Equal(out[:m], src) {
					t.Fatalf("%s level %d, %d bytes: pierrec's decoder: %v", name, level, len(src), err)
				}
			}
			if _, err := c.Decompress(make([]byte, PageSize), nil); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: empty input: %v", name, err)
			}
		}
	}
}

// TestLZ4DictGain: a page that resembles the dictionary compresses smaller
// with it. The extreme, a page the dictionary holds whole, becomes one
// match: a few bytes.
func TestLZ4DictGain(t *testing.T) {
	pages := laterPages(t)
	for _, name := range []string{"lz4", "lz4hc"} {
		for i, page := range pages[:3] {
			dict := append(randomBytes(int64(i), 20<<10), page...)
			dict = append(dict, randomBytes(int64(i+10), 1000)...)
			plain := newCtx(t, name, Params{})
			withDict := newCtx(t, name, Params{Dict: dict})
			comp := make([]byte, 2*PageSize)
			p, err := plain.Compress(comp, page)
			if err != nil {
				t.Fatal(err)
			}
			d, err := withDict.Compress(comp, page)
			if err != nil {
				t.Fatal(err)
			}
			// At best one match of 4091 bytes (a token, an offset and 16
			// length bytes) then 5 literals: 25 bytes. lz4 may miss the
			// first positions (its table keeps one of them per hash).
			if d > 32 {
				t.Errorf("%s page %d: %d bytes with the page in the dictionary (%d without)", name, i, d, p)
			}
			t.Logf("%s page %d: %d bytes plain, %d with the page in the dictionary", name, i, p, d)
		}
	}
}

// TestLZ4HCDictParity keeps lz4dict.go's HC encoder honest: with a one-byte
// dictionary (nothing to gain from it) its ratio is pierrec's CompressorHC's
// at the same depth, within a percent.
func TestLZ4HCDictParity(t *testing.T) {
	pages := laterPages(t)
	for _, pk := range lz4DictInputs(t) {
		pages = append(pages, pk.data)
	}
	for _, level := range []int{1, 4, 9} {
		e := newLZ4HCDictEncoder([]byte{0}, 1<<(level-1))
		hc := lz4.CompressorHC{Level: lz4.CompressionLevel(1 << (level - 1))}
		ours, theirs := 0, 0
		for _, p := range pages {
			dst := make([]byte, lz4.CompressBlockBound(len(p)))
			n, err := e.compress(dst, p)
			if err != nil {
				t.Fatal(err)
			}
			ours += n
			m, err := hc.CompressBlock(p, dst)
			if err != nil {
				t.Fatal(err)
			}
			if m == 0 { // pierrec's "incompressible": stored as literals
				m = 1 + lz4LenBytes(len(p)) + len(p)
			}
			theirs += m
		}
		t.Logf("level %d: %d pages, %d bytes ours, %d pierrec's", level, len(pages), ours, theirs)
		if ours > theirs*101/100 {
			t.Errorf("level %d: %d bytes, pierrec's CompressorHC %d", level, ours, theirs)
		}
	}
}

// TestLZ4DictZeroAlloc: the encoders allocate nothing per page.
func TestLZ4DictZeroAlloc(t *testing.T) {
	if testing.Short() {
		t.Skip("alloc counts need a quiet run")
	}
	dict := readDict(t)
	text, random := testPages(t)[1].data, testPages(t)[2].data
	dst, small := make([]byte, 2*PageSize), make([]byte, hugeThreshold)
	for _, impl := range lz4DictImpls() {
		f := impl.f(dict)
		for _, src := range [][]byte{text, random} {
			if a := testing.AllocsPerRun(50, func() { _, _ = f(dst, src); _, _ = f(small, src) }); a != 0 {
				t.Errorf("%s: %.1f allocs/op, want 0", impl.name, a)
			}
		}
	}
}

// TestLZ4DictLiblz4 decodes dictionary blocks with the reference decoder,
// liblz4's LZ4_decompress_safe_usingDict, where python3 and liblz4 are
// installed.
func TestLZ4DictLiblz4(t *testing.T) {
	var blocks []liblz4Block
	for _, dc := range lz4Dicts(t) {
		for _, impl := range lz4DictImpls() {
			if impl.name != "lz4/accel=1" && impl.name != "lz4hc/level=9" {
				continue // the rest are the same writer, with other matches
			}
			compress := impl.f(dc.dict)
			for _, in := range lz4DictInputs(t) {
				dst := make([]byte, lz4.CompressBlockBound(len(in.data)))
				n, err := compress(dst, in.data)
				if err != nil {
					t.Fatal(err)
				}
				blocks = append(blocks, liblz4Block{block: dst[:n], want: in.data, dict: dc.dict})
			}
		}
	}
	checkLiblz4(t, blocks)
}

// FuzzLZ4DictRoundTrip compresses arbitrary input against an arbitrary
// dictionary with both encoders and checks the blocks as
// TestLZ4DictRoundTrip does.
// Run it with: go test -fuzz=FuzzLZ4DictRoundTrip -fuzztime=60s ./zcomp/
func FuzzLZ4DictRoundTrip(f *testing.F) {
	text := readDict(f)
	for _, pk := range testPages(f) {
		f.Add(pk.data, text[:1024], uint16(1), uint8(9))
	}
	f.Add(text[5000:9096], text, uint16(1), uint8(1))
	f.Add(bytes.Repeat([]byte("abcd"), 100), []byte("abcdabcd"), uint16(2), uint8(16))
	f.Add([]byte("0123456789abcdef0123456789abcdef"), []byte("0123456789abcdef"), uint16(1), uint8(4))
	f.Fuzz(func(t *testing.T, src, dict []byte, accel uint16, level uint8) {
		if len(src) > PageSize {
			src = src[:PageSize]
		}
		if len(dict) == 0 {
			return
		}
		fast := newLZ4DictEncoder(dict)
		hc := newLZ4HCDictEncoder(dict, 1<<(int(level)%lz4hcMaxLevel))
		a := int(accel)%lz4MaxAcceleration + 1
		for _, enc := range []struct {
			name string
			f    func(dst, src []byte) (int, error)
		}{
			{"lz4", func(dst, src []byte) (int, error) { return fast.compress(dst, src, a) }},
			{"lz4hc", hc.compress},
		} {
			dst := make([]byte, lz4.CompressBlockBound(len(src)))
			n, err := enc.f(dst, src)
			if err != nil {
				t.Fatalf("%s: %v", enc.name, err)
			}
			lz4DictCheck(t, enc.name, dst[:n], src, dict)
			short, ok := canaryDst(n - 1)
			if m, err := enc.f(short, src); !errors.Is(err, ErrNoSpace) || m != 0 || !ok() {
				t.Fatalf("%s: into %d bytes: n=%d err=%v canary=%v", enc.name, n-1, m, err, ok())
			}
		}
	})
}
