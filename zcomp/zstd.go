package zcomp

import (
	"encoding/binary"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// zstdBackend is Zstandard (klauspost/compress/zstd), zram's "zstd". Each
// page is one standard zstd frame without a checksum: the device keeps pages
// in memory, where a CRC buys nothing and costs 4 bytes a page.
//
// klauspost offers four encoder strategies rather than zstd's 22 levels, so a
// zstd level picks the nearest one by compression ratio (the table in
// zstdEncoderLevel). Level 0 is zstd's default, 3.
//
// A dictionary is used as zstd itself (and zram, with ZSTD_dct_auto) would: a
// file starting with the zstd dictionary magic is a trained dictionary
// ("zstd --train"), anything else is raw content used as history. klauspost
// re-primes its match tables from the dictionary on every EncodeAll, so a
// dictionary costs compression speed at every level (BenchmarkDict), and at
// levels 10-22 so much that NewContext refuses the combination.
type zstdBackend struct{}

func init() { Register(zstdBackend{}) }

const (
	zstdMinLevel     = 1
	zstdMaxLevel     = 22 // ZSTD_maxCLevel()
	zstdDefaultLevel = 3  // ZSTD_CLEVEL_DEFAULT
	// zstdDictMagic starts a trained dictionary (RFC 8878 §5).
	zstdDictMagic = 0xEC30A437
	// zstdMaxWindow bounds what a frame may declare. Our frames are one page
	// (single segment, window = content size), so anything bigger is garbage
	// and must not make the decoder allocate its claimed window.
	zstdMaxWindow = 1 << 20
)

func (zstdBackend) Name() string { return "zstd" }

func (zstdBackend) ValidateLevel(level int) error {
	return checkLevel("zstd", level, zstdMinLevel, zstdMaxLevel, zstdDefaultLevel)
}

// zstdEncoderLevel maps a zstd level onto klauspost's strategies by ratio,
// following klauspost's own notes on what each one matches:
//
//	1-2   SpeedFastest            (zstd --fast territory, level 1)
//	3-5   SpeedDefault            (zstd level 3)
//	6-9   SpeedBetterCompression  (about zstd 7-8)
//	10-22 SpeedBestCompression    (klauspost's best; zstd's upper levels
//	                               are out of reach)
//
// It is spelled out here rather than calling zstd.EncoderLevelFromZstd so a
// library upgrade cannot silently move a configured level.
func zstdEncoderLevel(level int) zstd.EncoderLevel {
	switch {
	case level <= 2:
		return zstd.SpeedFastest
	case level <= 5:
		return zstd.SpeedDefault
	case level <= 9:
		return zstd.SpeedBetterCompression
	default:
		return zstd.SpeedBestCompression
	}
}

func (b zstdBackend) NewContext(p Params) (Context, error) {
	level, err := resolveLevel(b, p.Level, zstdDefaultLevel)
	if err != nil {
		return nil, err
	}
	if len(p.Dict) > 0 && zstdEncoderLevel(level) == zstd.SpeedBestCompression {
		// Its Reset copies 34 MiB of dictionary-primed match tables per
		// EncodeAll: about 10 ms a page. Refuse rather than crawl.
		return nil, fmt.Errorf("zcomp: zstd: level %d with a dictionary would copy 34 MiB of match tables per page; use level 1..9 with a dictionary", level)
	}
	eopts := []zstd.EOption{
		// EncodeAll is synchronous; one encoder is all a context needs.
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false),
		zstd.WithEncoderLevel(zstdEncoderLevel(level)),
		// The window only has to cover a page (and a dictionary); the
		// default 4-8 MiB would size the encoder's history for nothing.
		zstd.WithWindowSize(zstdMaxWindow),
		// An empty input still makes a frame, so Decompress can treat an
		// empty source as corrupt and empty pages still round-trip.
		zstd.WithZeroFrames(true),
	}
	dopts := []zstd.DOption{
		zstd.WithDecoderConcurrency(1),
		// Decode into the caller's buffer and fail rather than grow it: no
		// allocation, and nothing written past len(dst).
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
	}
	if len(p.Dict) > 0 {
		if len(p.Dict) >= 8 && binary.LittleEndian.Uint32(p.Dict) == zstdDictMagic {
			eopts = append(eopts, zstd.WithEncoderDict(p.Dict))
			dopts = append(dopts, zstd.WithDecoderDicts(p.Dict))
		} else {
			// ID 0 keeps the dictionary ID out of every frame header.
			eopts = append(eopts, zstd.WithEncoderDictRaw(0, p.Dict))
			dopts = append(dopts, zstd.WithDecoderDictRaw(0, p.Dict))
		}
	}
	enc, err := zstd.NewWriter(nil, eopts...)
	if err != nil {
		return nil, fmt.Errorf("zcomp: zstd: encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, dopts...)
	if err != nil {
		_ = enc.Close()
		return nil, fmt.Errorf("zcomp: zstd: decoder: %w", err)
	}
	c := &zstdContext{enc: enc, dec: dec}
	c.grow(PageSize)
	warm(c)
	return c, nil
}

// zstdContext holds one encoder and one decoder, each with concurrency 1,
// plus a scratch buffer the encoder may overrun (see Compress).
type zstdContext struct {
	enc     *zstd.Encoder
	dec     *zstd.Decoder
	scratch []byte
}

// grow makes scratch big enough for any encoding of n bytes. EncodeAll
// appends, and a block it tries to compress can come out larger than the
// stored form it then falls back to, so give it twice the bound.
func (c *zstdContext) grow(n int) {
	if want := 2 * c.enc.MaxEncodedSize(n); cap(c.scratch) < want {
		c.scratch = make([]byte, 0, want)
	}
}

func (c *zstdContext) Compress(dst, src []byte) (int, error) {
	// Encoding straight into dst would let EncodeAll reallocate whenever the
	// page does not fit, on every incompressible page. The scratch never
	// needs to grow for a page, and the copy is small next to the encode.
	c.grow(len(src))
	out := c.enc.EncodeAll(src, c.scratch[:0])
	if cap(out) > cap(c.scratch) {
		c.scratch = out[:0] // it grew anyway: keep the bigger buffer
	}
	if len(out) > len(dst) {
		return 0, ErrNoSpace
	}
	return copy(dst, out), nil
}

func (c *zstdContext) Decompress(dst, src []byte) (int, error) {
	if len(src) == 0 {
		// DecodeAll accepts "no frames" as empty output; an empty source is
		// never a page we wrote.
		return 0, fmt.Errorf("%w: zstd: empty input", ErrCorrupt)
	}
	out, err := c.dec.DecodeAll(src, dst[:0:len(dst)])
	if err != nil {
		return 0, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
	}
	if len(out) > 0 && &out[0] != &dst[0] {
		// The cap limit makes this unreachable; stay correct if it is not.
		if len(out) > len(dst) {
			return 0, fmt.Errorf("%w: zstd: %d bytes do not fit in %d", ErrCorrupt, len(out), len(dst))
		}
		copy(dst, out)
	}
	return len(out), nil
}

// Close releases the encoder and decoder; calling it again is harmless.
func (c *zstdContext) Close() {
	if c.enc != nil {
		_ = c.enc.Close()
		c.dec.Close()
	}
	c.enc, c.dec, c.scratch = nil, nil, nil
}
