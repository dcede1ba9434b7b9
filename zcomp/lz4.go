package zcomp

import (
	"fmt"

	"github.com/pierrec/lz4/v4"
)

// lz4Backend is LZ4 block compression (pierrec/lz4), zram's "lz4".
type lz4Backend struct{}

func init() { Register(lz4Backend{}) }

func (lz4Backend) Name() string { return "lz4" }

func (lz4Backend) NewContext(p Params) (Context, error) {
	if p.Level != 0 {
		return nil, fmt.Errorf("zcomp: lz4 has no levels (got level=%d); use lz4hc for levels", p.Level)
	}
	return &lz4Context{dict: p.Dict}, nil
}

// lz4Context keeps the compressor's hash table so a page costs no allocation.
type lz4Context struct {
	c    lz4.Compressor
	dict []byte
}

func (c *lz4Context) Compress(dst, src []byte) (int, error) {
	n, err := c.c.CompressBlock(src, dst)
	if err != nil || n == 0 {
		// pierrec/lz4 reports "does not fit" as n == 0 or a short-buffer error.
		return 0, ErrNoSpace
	}
	return n, nil
}

func (c *lz4Context) Decompress(dst, src []byte) (int, error) {
	var n int
	var err error
	if c.dict != nil {
		n, err = lz4.UncompressBlockWithDict(src, dst, c.dict)
	} else {
		n, err = lz4.UncompressBlock(src, dst)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: lz4: %v", ErrCorrupt, err)
	}
	return n, nil
}

func (c *lz4Context) Close() {}
