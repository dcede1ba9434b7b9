package zcomp

import (
	"errors"
	"fmt"

	"github.com/pierrec/lz4/v4"
)

// lz4Backend is LZ4 block compression (pierrec/lz4), zram's "lz4".
//
// zram passes its level to LZ4_compress_fast as the acceleration factor, so
// level N (1..65537) here is the same: pierrec's CompressorCCompat, whose
// output matches LZ4_compress_fast with that acceleration. The default
// (level 0) is pierrec's own Compressor instead, which is faster and about as
// good on 4 KiB pages (DESIGN.md §9).
//
// Dictionaries are rejected: pierrec/lz4 v4.1.33 can decode against a
// dictionary (UncompressBlockWithDict) but has no compressor that takes one.
type lz4Backend struct{}

func init() { Register(lz4Backend{}) }

// lz4MaxAcceleration is LZ4_ACCELERATION_MAX; lz4.c clamps above it.
const lz4MaxAcceleration = 65537

var errLZ4Dict = errors.New("dictionaries are not supported: pierrec/lz4 v4.1.33 cannot compress with one; use zstd or deflate")

func (lz4Backend) Name() string { return "lz4" }

func (lz4Backend) ValidateLevel(level int) error {
	return checkRange("lz4", level, 1, lz4MaxAcceleration, "pierrec's fast compressor; N>=1 is LZ4_compress_fast acceleration N")
}

func (b lz4Backend) NewContext(p Params) (Context, error) {
	if err := b.ValidateLevel(p.Level); err != nil {
		return nil, err
	}
	if p.Dict != nil {
		return nil, fmt.Errorf("zcomp: lz4: %w", errLZ4Dict)
	}
	if p.Level == 0 {
		return &lz4Context{}, nil
	}
	return &lz4AccelContext{c: lz4.CompressorCCompat{Acceleration: p.Level}}, nil
}

// lz4Context keeps the compressor's hash table so a page costs no allocation.
type lz4Context struct {
	c lz4.Compressor
}

func (c *lz4Context) Compress(dst, src []byte) (int, error) {
	// The capacity cap keeps the compressor inside len(dst) whatever it does.
	return lz4Result(c.c.CompressBlock(src, dst[:len(dst):len(dst)]))
}

func (c *lz4Context) Decompress(dst, src []byte) (int, error) { return lz4Decompress(dst, src) }

func (c *lz4Context) Close() {}

// lz4AccelContext is the LZ4_compress_fast-compatible compressor, used when a
// level (acceleration) is set.
type lz4AccelContext struct {
	c lz4.CompressorCCompat
}

func (c *lz4AccelContext) Compress(dst, src []byte) (int, error) {
	return lz4Result(c.c.CompressBlock(src, dst[:len(dst):len(dst)]))
}

func (c *lz4AccelContext) Decompress(dst, src []byte) (int, error) { return lz4Decompress(dst, src) }

func (c *lz4AccelContext) Close() {}

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
