package zcomp

import "github.com/pierrec/lz4/v4"

// lz4hcBackend is LZ4 high-compression (pierrec's CompressorHC), zram's
// "lz4hc". Its output is the plain LZ4 block format, decoded like lz4's.
//
// Levels follow the kernel's lz4hc (lib/lz4/lz4hc_compress.c): level N
// follows at most 2^(N-1) candidates per hash chain, N in 1..16, default 9
// (LZ4HC_DEFAULT_CLEVEL, 256 candidates). pierrec's CompressorHC.Level is that
// same search depth, so the mapping is exact rather than approximate.
//
// pierrec has no HC compressor that takes a dictionary, so with one a page
// goes to lz4dict.go's HC encoder: the same parse and search depth, over a
// window that starts with the dictionary's last 60 KiB. Its ratio without a
// dictionary is within a percent of pierrec's (TestLZ4HCDictParity).
type lz4hcBackend struct{}

func init() { Register(lz4hcBackend{}) }

const (
	lz4hcMinLevel     = 1
	lz4hcMaxLevel     = 16 // LZ4HC_MAX_CLEVEL in the kernel
	lz4hcDefaultLevel = 9  // LZ4HC_DEFAULT_CLEVEL
)

func (lz4hcBackend) Name() string { return "lz4hc" }

func (lz4hcBackend) ValidateLevel(level int) error {
	return checkLevel("lz4hc", level, lz4hcMinLevel, lz4hcMaxLevel, lz4hcDefaultLevel)
}

func (b lz4hcBackend) NewContext(p Params) (Context, error) {
	level, err := resolveLevel(b, p.Level, lz4hcDefaultLevel)
	if err != nil {
		return nil, err
	}
	depth := 1 << (level - 1)
	if len(p.Dict) > 0 {
		return &lz4hcDictContext{depth: depth, denc: newLZ4HCDictEncoder(p.Dict, depth), dict: lz4DictTail(p.Dict)}, nil
	}
	return &lz4hcContext{c: lz4.CompressorHC{Level: lz4.CompressionLevel(depth)}}, nil
}

// lz4hcContext owns CompressorHC's hash and chain tables (256 KiB for inputs
// up to 64 KiB), so a page clears the 128 KiB hash table instead of
// allocating one.
type lz4hcContext struct {
	c lz4.CompressorHC
}

func (c *lz4hcContext) Compress(dst, src []byte) (int, error) {
	return lz4Result(c.c.CompressBlock(src, dst[:len(dst):len(dst)]))
}

func (c *lz4hcContext) Decompress(dst, src []byte) (int, error) { return lz4Decompress(dst, src) }

func (c *lz4hcContext) Close() {}

// lz4hcDictContext compresses pages against a dictionary (448 KiB of
// tables and window). Larger inputs go to pierrec's CompressorHC, allocated
// on first use: their blocks decode the same with the dictionary.
type lz4hcDictContext struct {
	depth int
	denc  *lz4HCDictEncoder
	dict  []byte // the dictionary's last 64 KiB, for the decoder
	big   *lz4.CompressorHC
}

func (c *lz4hcDictContext) Compress(dst, src []byte) (int, error) {
	if len(src) <= PageSize {
		return c.denc.compress(dst, src)
	}
	if c.big == nil {
		c.big = &lz4.CompressorHC{Level: lz4.CompressionLevel(c.depth)}
	}
	return lz4Result(c.big.CompressBlock(src, dst[:len(dst):len(dst)]))
}

func (c *lz4hcDictContext) Decompress(dst, src []byte) (int, error) {
	return lz4DecompressDict(dst, src, c.dict)
}

func (c *lz4hcDictContext) Close() {}
