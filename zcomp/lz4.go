package zcomp

import (
	"fmt"

	"github.com/pierrec/lz4/v4"
)

// lz4Backend is LZ4 block compression, zram's "lz4": our own encoder for
// inputs up to 64 KiB (lz4page.go), pierrec/lz4's decoder.
//
// zram passes its level to LZ4_compress_fast as the acceleration factor, so
// level N (1..65537) here is the same: the initial step between probes of
// lz4page.go's encoder, which grows with misses exactly as in lz4.c. Level 0
// (the default) is acceleration 1, as LZ4_compress_default.
//
// Inputs over 64 KiB (never a page; only a direct caller could pass one) go
// to pierrec's Compressor, allocated on first use, whatever the level.
//
// A dictionary (any bytes: LZ4 has no trained format) is used as zram's
// LZ4_loadDict: its last 60 KiB precede every page (lz4dict.go), and pages
// decode with pierrec's UncompressBlockWithDict.
type lz4Backend struct{}

func init() { Register(lz4Backend{}) }

// lz4MaxAcceleration is LZ4_ACCELERATION_MAX; lz4.c clamps above it.
const lz4MaxAcceleration = 65537

func (lz4Backend) Name() string { return "lz4" }

func (lz4Backend) ValidateLevel(level int) error {
	return checkRange("lz4", level, 1, lz4MaxAcceleration, "acceleration 1; N>=1 is LZ4_compress_fast acceleration N")
}

func (b lz4Backend) NewContext(p Params) (Context, error) {
	if err := b.ValidateLevel(p.Level); err != nil {
		return nil, err
	}
	accel := max(p.Level, 1)
	if len(p.Dict) > 0 {
		// A context of its own, so the plain one's Compress stays as it was.
		return &lz4DictContext{lz4Context: lz4Context{accel: accel},
			denc: newLZ4DictEncoder(p.Dict), dict: lz4DictTail(p.Dict)}, nil
	}
	return &lz4Context{accel: accel}, nil
}

// lz4Context keeps the encoder's 8 KiB hash table so a page costs no
// allocation.
type lz4Context struct {
	enc   lz4PageEncoder
	accel int
	big   *lz4.Compressor // inputs over 64 KiB; nil until one comes
}

func (c *lz4Context) Compress(dst, src []byte) (int, error) {
	if len(src) <= lz4PageMaxInput {
		return c.enc.compress(dst, src, c.accel)
	}
	if c.big == nil {
		c.big = new(lz4.Compressor)
	}
	// The capacity cap keeps the compressor inside len(dst) whatever it does.
	return lz4Result(c.big.CompressBlock(src, dst[:len(dst):len(dst)]))
}

func (c *lz4Context) Decompress(dst, src []byte) (int, error) { return lz4Decompress(dst, src) }

func (c *lz4Context) Close() {}

// lz4DictContext compresses pages against a dictionary. Larger inputs go to
// the plain encoders: their blocks decode the same with the dictionary.
type lz4DictContext struct {
	lz4Context
	denc *lz4DictEncoder
	dict []byte // the dictionary's last 64 KiB, for the decoder
}

func (c *lz4DictContext) Compress(dst, src []byte) (int, error) {
	if len(src) <= PageSize {
		return c.denc.compress(dst, src, c.accel)
	}
	return c.lz4Context.Compress(dst, src)
}

func (c *lz4DictContext) Decompress(dst, src []byte) (int, error) {
	return lz4DecompressDict(dst, src, c.dict)
}

// lz4Result maps pierrec's ways of saying "does not fit" onto ErrNoSpace:
// n == 0 (with or without a short-buffer error). Compressing a page cannot
// fail otherwise, so no error is lost.
func lz4Result(n int, err error) (int, error) {
	if err != nil || n == 0 {
		return 0, ErrNoSpace
	}
	return n, nil
}

// lz4Decompress serves lz4 and lz4hc: both write the plain LZ4 block format.
func lz4Decompress(dst, src []byte) (int, error) {
	if len(src) == 0 {
		// pierrec accepts it as 0 bytes; a block we wrote is never empty.
		return 0, fmt.Errorf("%w: lz4: empty input", ErrCorrupt)
	}
	n, err := lz4.UncompressBlock(src, dst[:len(dst):len(dst)])
	if err != nil {
		return 0, fmt.Errorf("%w: lz4: %v", ErrCorrupt, err)
	}
	return n, nil
}
