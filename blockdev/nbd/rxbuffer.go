package nbd

import (
	"io"
	"syscall"
	"unsafe"
)

// rxBuffer is a buffered reader over a buffer of the connection's
// (buffers.go), faulted in ahead of use: bufio.Reader allocates its own.
type rxBuffer struct {
	src        io.Reader
	buf        []byte
	start, end int
	err        error
}

func newRxBuffer(src io.Reader, buf []byte) *rxBuffer {
	return &rxBuffer{src: src, buf: buf}
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

// Read copies buffered data (a request header), filling the buffer first
// when it is empty.
func (b *rxBuffer) Read(p []byte) (int, error) {
	if b.start == b.end {
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.buf[b.start:b.end])
	b.start += n
	return n, nil
}

// rawReader reads a non-blocking socket with RawSyscall, waiting in the
// poller on EAGAIN. net.Conn's Read enters and leaves the runtime's syscall
// state around every read (and wakes sysmon when the process was idle, a
// thread wakeup per burst); a read of a non-blocking socket never blocks
// in the kernel, so it needs neither.
type rawReader struct {
	rc  syscall.RawConn
	fn  func(fd uintptr) bool // rr.read, made once
	p   []byte
	n   int
	err error
}

func (rr *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	rr.p, rr.n, rr.err = p, 0, nil
	err := rr.rc.Read(rr.fn)
	rr.p = nil
	if err != nil {
		return 0, err // deadline (stop) or closed
	}
	if rr.err != nil {
		return 0, rr.err
	}
	if rr.n == 0 {
		return 0, io.EOF
	}
	return rr.n, nil
}

// read is the RawConn.Read callback: false asks the poller to wait.
func (rr *rawReader) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&rr.p[0])), uintptr(len(rr.p)))
		switch e {
		case 0:
			rr.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			rr.err = e
			return true
		}
	}
}
