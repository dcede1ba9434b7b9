package zcomp

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/flate"
)

// deflateBackend is raw deflate (RFC 1951, no zlib header or checksum) from
// klauspost/compress/flate, zram's "deflate". The kernel backend also writes
// raw deflate (negative window bits), so a page costs no framing bytes.
//
// Levels are zlib's 1..9 with zlib's default 6, as zram's deflate takes them.
// klauspost runs 1-6 on its fast matchers and 7-9 on a lazy-matching hash
// chain whose 640 KiB of tables is cleared for every page: 7-9 buy little
// ratio on 4 KiB pages at a steep cost.
//
// A dictionary primes the window (its last 32 KiB, deflate's reach). The
// writer re-reads it for every page, so compression slows in proportion to
// the dictionary's size; keep deflate dictionaries small.
type deflateBackend struct{}

func init() { Register(deflateBackend{}) }

const (
	deflateMinLevel     = 1
	deflateMaxLevel     = 9
	deflateDefaultLevel = 6 // Z_DEFAULT_COMPRESSION means 6 in zlib
	// deflateMaxEmptyReads bounds a reader that neither progresses nor fails.
	deflateMaxEmptyReads = 100
)

func (deflateBackend) Name() string { return "deflate" }

func (deflateBackend) ValidateLevel(level int) error {
	return checkLevel("deflate", level, deflateMinLevel, deflateMaxLevel, deflateDefaultLevel)
}

func (b deflateBackend) NewContext(p Params) (Context, error) {
	level, err := resolveLevel(b, p.Level, deflateDefaultLevel)
	if err != nil {
		return nil, err
	}
	c := &deflateContext{dict: p.Dict}
	if len(p.Dict) > 0 {
		c.w, err = flate.NewWriterDict(nil, level, p.Dict)
	} else {
		c.w, err = flate.NewWriter(nil, level)
	}
	if err != nil {
		return nil, fmt.Errorf("zcomp: deflate: %w", err)
	}
	c.r = flate.NewReaderDict(&c.in, p.Dict)
	c.rr = c.r.(flate.Resetter)
	warm(c)
	return c, nil
}

// deflateContext keeps a writer and a reader and re-points them at each page
// with Reset, so their windows and tables are built once.
type deflateContext struct {
	w    *flate.Writer
	out  sliceWriter
	r    io.ReadCloser
	rr   flate.Resetter // r, seen through the interface that resets it
	in   bytes.Reader
	dict []byte
	one  [1]byte
}

// sliceWriter appends into a fixed buffer and refuses to grow it, so the
// flate writer fails with ErrNoSpace instead of writing past dst.
type sliceWriter struct{ buf []byte }

func (s *sliceWriter) Write(p []byte) (int, error) {
	if len(p) > cap(s.buf)-len(s.buf) {
		return 0, ErrNoSpace
	}
	s.buf = append(s.buf, p...)
	return len(p), nil
}

func (c *deflateContext) Compress(dst, src []byte) (int, error) {
	c.out.buf = dst[:0:len(dst)]
	// Drop the caller's buffer once done: the context outlives the call.
	defer func() { c.out.buf = nil }()
	c.w.Reset(&c.out)
	_, err := c.w.Write(src)
	if err == nil {
		err = c.w.Close()
	}
	if errors.Is(err, ErrNoSpace) {
		return 0, ErrNoSpace
	}
	if err != nil {
		return 0, fmt.Errorf("zcomp: deflate: %w", err)
	}
	return len(c.out.buf), nil
}

func (c *deflateContext) Decompress(dst, src []byte) (int, error) {
	c.in.Reset(src)
	// Reset only re-points the reader, it cannot fail.
	_ = c.rr.Reset(&c.in, c.dict)
	n, empty := 0, 0
	for n < len(dst) {
		m, err := c.r.Read(dst[n:])
		n += m
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("%w: deflate: %v", ErrCorrupt, noEOF(err))
		}
		if m == 0 {
			if empty++; empty > deflateMaxEmptyReads {
				return 0, fmt.Errorf("%w: deflate: reader makes no progress", ErrCorrupt)
			}
		}
	}
	// dst is full: the stream must end exactly here.
	m, err := c.r.Read(c.one[:])
	if m > 0 {
		return 0, fmt.Errorf("%w: deflate: output larger than %d bytes", ErrCorrupt, len(dst))
	}
	if err != io.EOF {
		return 0, fmt.Errorf("%w: deflate: %v", ErrCorrupt, noEOF(err))
	}
	return n, nil
}

// noEOF names a stream that stops before its final block for what it is.
func noEOF(err error) error {
	if err == nil || err == io.ErrUnexpectedEOF {
		return errors.New("truncated stream")
	}
	return err
}

// Close drops the writer and reader; calling it again is harmless.
func (c *deflateContext) Close() {
	if c.r != nil {
		_ = c.r.Close()
	}
	c.w = nil
	c.r, c.rr = nil, nil
}
