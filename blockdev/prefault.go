package blockdev

import "io"

// A swap device's server must not take a page fault on fresh memory while
// serving a request: the kernel may be out of memory and waiting for that
// very request to swap pages out (hack/guest-README.md has the stacks). Go's
// make() of a large buffer returns fresh OS pages without touching them, so
// the first read(2) into it faults inside the kernel's copy. Buffers of the
// transmission path are therefore touched when the connection starts, while
// memory is still plentiful; under mlockall (swapsafe) they then stay put.

// prefault touches every page of b so it is backed by memory now.
func prefault(b []byte) {
	for i := 0; i < len(b); i += 4096 {
		b[i] = 0
	}
	if len(b) > 0 {
		b[len(b)-1] = 0
	}
}

// rxBuffer is a buffered reader over a prefaulted buffer: bufio.Reader
// allocates its own buffer, which cannot be touched ahead of use.
type rxBuffer struct {
	src        io.Reader
	buf        []byte
	start, end int
	err        error
}

func newRxBuffer(src io.Reader, size int) *rxBuffer {
	b := &rxBuffer{src: src, buf: make([]byte, size)}
	prefault(b.buf)
	return b
}

// fill reads at least once from src into the free part of the buffer.
func (b *rxBuffer) fill() error {
	if b.err != nil {
		return b.err
	}
	if b.start > 0 {
		b.end = copy(b.buf, b.buf[b.start:b.end])
		b.start = 0
	}
	n, err := b.src.Read(b.buf[b.end:])
	b.end += n
	if n == 0 && err == nil {
		err = io.ErrNoProgress
	}
	if err != nil {
		b.err = err
		if n > 0 {
			return nil
		}
	}
	return err
}

// buffered is how many bytes a Read returns without touching src.
func (b *rxBuffer) buffered() int { return b.end - b.start }

// peek returns the next n buffered bytes (n <= buffered) without consuming
// them; they stay valid until the next Read or fill.
func (b *rxBuffer) peek(n int) []byte { return b.buf[b.start : b.start+n] }

// discard consumes n buffered bytes.
func (b *rxBuffer) discard(n int) { b.start += n }

// waitData blocks until at least one byte is buffered: the start of a request.
func (b *rxBuffer) waitData() error {
	for b.start == b.end {
		if err := b.fill(); err != nil {
			return err
		}
	}
	return nil
}

// Read copies buffered data; large reads with an empty buffer go straight
// to src (into the caller's buffer, which is prefaulted too).
func (b *rxBuffer) Read(p []byte) (int, error) {
	if b.start == b.end {
		if len(p) >= len(b.buf) {
			if b.err != nil {
				return 0, b.err
			}
			return b.src.Read(p)
		}
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.buf[b.start:b.end])
	b.start += n
	return n, nil
}
