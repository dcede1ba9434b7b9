// Package zcomp holds uzram's compression backends behind one small interface,
// in the shape of the kernel's zcomp split (drivers/block/zram/zcomp.h):
//
//   - Params: what a backend is configured with (level, dictionary). Immutable
//     once built and shared by every context of that backend.
//   - Context: a backend's mutable scratch state. Never shared: one per stream.
//     streams/ owns the locking and lifetime of contexts.
//
// The hot path allocates nothing: the caller owns every buffer. Compress
// writes into dst and fails with ErrNoSpace when the result would not fit in
// len(dst); the block device passes a dst sized to its huge threshold, so an
// incompressible page costs one failed attempt and is then stored raw.
// Decompress fails with an error wrapping ErrCorrupt, never writes past
// len(dst), and treats output that would not fit as corrupt.
//
// # Backends
//
// Each is one file, registered under zram's name, with zram's level meaning:
//
//	name     library                       level (0 = default)                  dict
//	lz4      our encoder (lz4page.go),     acceleration 1..65537, as zram's     raw, last 60 KiB
//	         pierrec/lz4 block decoder     LZ4_compress_fast; default 1
//	lz4hc    pierrec/lz4 CompressorHC;     1..16, 2^(N-1) chain candidates as   raw, last 60 KiB
//	         ours with a dict (lz4dict.go) the kernel's lz4hc; default 9
//	zstd     klauspost/compress/zstd       1..22 mapped onto klauspost's four   trained or raw
//	                                       strategies (zstd.go); default 3
//	deflate  klauspost/compress/flate      zlib's 1..9, raw deflate; default 6  raw, last 32 KiB
//
// lz4 is the default: fastest by far and what zram users pick for swap.
// lz4hc trades compression speed for ratio at the same decompression speed;
// zstd and deflate trade both for the best ratios, zstd decoding about twice
// as fast as deflate. Every backend takes a dictionary. pierrec/lz4 cannot
// compress with one, so lz4 and lz4hc use our own encoders for that
// (lz4dict.go); on text pages a 16 KiB dictionary gains lz4 about 15% and
// lz4hc about 25% (TestDictionary), at about lz4's speed and at 1.1-1.6x lz4hc's
// time.
//
// # Our own LZ4 encoder
//
// LZ4 compression is the heart of the write path: perf put it at about 35%
// of the server's write CPU, 10 us a page, with pierrec/lz4 v4.1.33. Its
// Compressor is built for streams of any size: a 64K-entry table (128 KiB,
// out of L1) and an in-use bitmap it clears and tests on every probe;
// CompressorCCompat zeroes its 128 KiB table per call. lz4page.go is
// LZ4_compress_fast specialised for inputs of at most 64 KiB, as the
// kernel's LZ4 does for them: uint16 positions in a 4096-entry table (8 KiB,
// zeroed per call, ~150 ns), no bitmap, no window checks, skip acceleration
// that rejects a random page after ~700 probes, and ErrNoSpace at the first
// write that would not fit. Its output is the standard LZ4 block format with
// its end-of-block rules, which any LZ4 decoder reads (the tests check it
// against a spec-strict decoder, pierrec's and liblz4's); decoding stays on
// pierrec (~1.5-2 GB/s). Inputs over 64 KiB fall back to pierrec.
//
// It replaced pierrec's Compressor as the default because it is faster on
// every kind of page measured (1.1x on machine code and text, 2-2.7x on
// half-compressible and random pages), with a better ratio where pages
// compress, and its context is 9 KiB instead of 135 KiB (the figures and how
// to reproduce them: docs/benchmarks.md). Safe Go
// throughout: unchecked loads gained too little (~3%) to be worth it.
//
// # Memory per context
//
// Measured as retained heap of a built context (stream count x this is what
// streams/ pays): lz4 9 KiB (plus pierrec's 136 KiB Compressor if it is ever
// given more than 64 KiB; with a dictionary, its window and primed table:
// up to 80 KiB more), lz4hc 265 KiB (with a dictionary, our encoder's
// tables and window instead: up to 450 KiB), deflate 0.85-1.4 MiB, zstd 0.65 MiB
// (level 1-2), 1.7 MiB (3-5), 6.5 MiB (6-9) and 37 MiB (10-22: klauspost's
// best strategy has fixed 34 MiB match tables, and compresses a page at only
// a few MB/s). A zstd dictionary adds about 3 MiB
// of primed tables; a deflate one, its copy.
//
// # Allocations
//
// Every backend compresses and decompresses without allocating once its
// context is built (TestZeroAlloc); zstd and deflate contexts run a few
// synthetic pages at construction so their buffers are already grown. Two
// library details remain, both rare and bounded: zstd's decoder borrows its
// Huffman and FSE tables from package-level sync.Pools, which the GC may
// empty (and the race detector empties on purpose), and flate's decoder grows
// its Huffman overflow tables to the deepest code it has seen. Both show as
// under 4 B/op averaged in the benchmarks.
package zcomp

import (
	"errors"
	"fmt"
	"math/bits"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// PageSize is the unit every backend compresses: one 4 KiB page.
const PageSize = 4096

// ErrNoSpace means the compressed result does not fit in the destination.
// It is not a failure: the caller stores the page uncompressed.
var ErrNoSpace = errors.New("zcomp: compressed data does not fit")

// ErrCorrupt means the source is not valid compressed data for the backend.
var ErrCorrupt = errors.New("zcomp: corrupt compressed data")

// Params configure a backend. The zero value means the backend's defaults.
type Params struct {
	// Level is the backend's compression level; 0 selects its default.
	Level int
	// Dict is a preset dictionary (every backend uses it); nil for none.
	// The backend keeps a reference: the caller must not modify it afterwards.
	Dict []byte
}

// Context is one stream's compression state. A Context is not safe for
// concurrent use; callers serialise access (streams/ holds a mutex per stream).
type Context interface {
	// Compress compresses src into dst and returns the number of bytes written.
	// It returns ErrNoSpace if the result would exceed len(dst).
	Compress(dst, src []byte) (int, error)
	// Decompress decompresses src into dst, which must be large enough for the
	// original data, and returns the number of bytes written.
	Decompress(dst, src []byte) (int, error)
	// Close releases the context's resources. The context is unusable after.
	Close()
}

// Backend is one algorithm: a named factory of contexts.
type Backend interface {
	// Name is the zram name of the algorithm (lz4, lz4hc, zstd, deflate...).
	Name() string
	// NewContext builds a context configured with p. It validates p and
	// returns a descriptive error for a bad level or dictionary.
	NewContext(p Params) (Context, error)
}

// LevelValidator is implemented by backends that check a level on its own,
// so a control plane can reject "level=N" before it builds any context.
// It is a separate interface so that test doubles of Backend need not grow.
type LevelValidator interface {
	// ValidateLevel returns nil if level is usable (0 always is: the
	// default) and otherwise an error naming the valid range.
	ValidateLevel(level int) error
}

// ValidateLevel checks level against the named backend's valid range.
func ValidateLevel(name string, level int) error {
	b, err := Lookup(name)
	if err != nil {
		return err
	}
	if v, ok := b.(LevelValidator); ok {
		return v.ValidateLevel(level)
	}
	if level != 0 {
		return fmt.Errorf("zcomp: %s has no levels (got level=%d)", name, level)
	}
	return nil
}

// resolveLevel checks level with v and turns 0 into def, the backend's
// default: what each NewContext does first.
func resolveLevel(v LevelValidator, level, def int) (int, error) {
	if err := v.ValidateLevel(level); err != nil {
		return 0, err
	}
	if level == 0 {
		return def, nil
	}
	return level, nil
}

// checkLevel is checkRange for a backend whose default is a level.
func checkLevel(name string, level, lo, hi, def int) error {
	return checkRange(name, level, lo, hi, strconv.Itoa(def))
}

// checkRange is the shared shape of the backends' level checks.
func checkRange(name string, level, lo, hi int, def string) error {
	if level == 0 || (level >= lo && level <= hi) {
		return nil
	}
	return fmt.Errorf("zcomp: %s: level %d out of range: want %d..%d, or 0 for the default (%s)", name, level, lo, hi, def)
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Backend{}
)

// Register adds a backend under its name. Backends register in init.
func Register(b Backend) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[b.Name()]; dup {
		panic("zcomp: backend registered twice: " + b.Name())
	}
	registry[b.Name()] = b
}

// Lookup returns the backend with the given zram name.
func Lookup(name string) (Backend, error) {
	registryMu.RLock()
	b, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("zcomp: unknown algorithm %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	return b, nil
}

// Names lists the registered algorithms, sorted.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Default is the algorithm a device uses when none is named, as zram's lzo-rle
// is for the kernel; lz4 is the fastest of our backends.
const Default = "lz4"

// warm runs a context once over synthetic pages so the buffers its library
// grows on demand (decoder literal buffers, Huffman link tables, pooled
// entropy tables) reach a page's high-water mark while the context is built,
// not on the first pages of the I/O path, which may run when memory is short
// and so must not allocate (see package swapsafe).
func warm(c Context) {
	var page, comp, out [PageSize]byte
	x := uint32(2463534242)
	next := func() uint32 { // xorshift32: deterministic, no allocation
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		return x
	}
	words := [...]string{"the ", "page ", "swap ", "zram ", "0x7f3a ", "func ", "return ", "\n\t"}
	for pass := 0; pass < 3; pass++ {
		switch pass {
		case 0: // text-like: matches plus Huffman and FSE tables
			for i := 0; i < len(page); {
				i += copy(page[i:], words[next()%uint32(len(words))])
			}
		case 1: // geometric symbols, no matches: a page of literals with
			// long Huffman codes, the largest tables and literal buffers
			for i := range page {
				v := next()
				page[i] = byte(bits.TrailingZeros32(v|1<<31)*7 + int(v>>29))
			}
		case 2: // noise: stored or raw blocks of a full page
			for i := range page {
				page[i] = byte(next())
			}
		}
		if n, err := c.Compress(comp[:], page[:]); err == nil {
			_, _ = c.Decompress(out[:], comp[:n])
		}
	}
}
