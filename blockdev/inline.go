package blockdev

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// Handing a request to a worker costs a goroutine wakeup, and often a
// thread wakeup and a context switch (worse when the server runs SCHED_RR:
// every wakeup preempts the client). Reading or writing one page is bounded
// CPU work, so on a plain socket the reader serves one-page READs and WRITEs
// itself when nothing would make it wait: the page's lock is free at once (a
// write holding it may be waiting for store memory) and, for a write, the
// store has memory ready (TryPut); streams are held only while compressing
// (writePage with scratch). Otherwise the request goes to a worker as
// before. Replies go out with a non-blocking writev: a full socket hands the
// rest to a worker, so the reader never waits for the client either.

// iovMax is Linux's IOV_MAX: the most buffers one writev takes.
const iovMax = 1024

// setupInline enables inline serving when the connection is a plain socket.
// The receive buffer then reads the socket with raw syscalls too (rawReader),
// starting with what the handshake's buffer already holds.
func (c *conn) setupInline(inflight int) error {
	if c.tls {
		return nil
	}
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	held, err := c.br.Peek(c.br.Buffered())
	if err != nil {
		return err
	}
	c.rx.end = copy(c.rx.buf, held) // handshakeBuffer < transmitBuffer
	c.br.Discard(len(held))
	rr := &rawReader{rc: rc}
	rr.fn = rr.read
	c.rx.src = rr
	c.rc = rc
	c.writevFn = c.writevNB
	c.scratch = make([]byte, PageSize)
	prefault(c.scratch)
	c.iovecs = make([]syscall.Iovec, 0, min(inflight, iovMax))
	return nil
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

// serveInline serves r in the reader if it is a one-page READ or WRITE that
// needs no waiting, or a request that fails validation; it reports whether
// it did. A WRITE's data is payload if given (the receive buffer itself),
// else its request buffer.
func (c *conn) serveInline(r *request, payload []byte) bool {
	if c.rc == nil {
		return false
	}
	h := &r.hdr
	d := c.dev
	if code := h.Validate(d.Size(), c.tflags); code != 0 {
		d.CountInvalid()
		c.prepareReply(r, code, 0)
	} else {
		if h.Length != PageSize || h.Offset%PageSize != 0 {
			return false
		}
		var ok bool
		var err error
		n := 0
		switch h.Type {
		case cmdRead:
			buf := r.grow(PageSize)
			ok, err = d.tryReadPage(buf[replyHeaderSize:], h.Offset/PageSize)
			n = PageSize
		case cmdWrite:
			if payload == nil {
				payload = r.buf[replyHeaderSize:]
			}
			ok, err = d.tryWritePage(payload[:PageSize], h.Offset/PageSize, c.scratch)
		}
		if !ok {
			return false
		}
		code := errno(err)
		c.srv.count(h.Type, code)
		c.prepareReply(r, code, n)
	}
	if c.done == nil {
		c.done = r
	} else {
		c.doneTail.next = r
	}
	c.doneTail = r
	c.doneLen++
	return true
}

// doneAdded sends the reader's replies once a batch's worth is ready, so a
// long run of buffered requests does not hold them back.
func (c *conn) doneAdded() {
	if c.doneLen >= batchMax {
		c.flushDone()
	}
}

// beforeBlock is called where the reader may wait (socket, tokens, budget):
// nothing it holds may wait with it.
func (c *conn) beforeBlock() {
	c.dispatch()
	c.flushDone()
}

// flushDone sends the replies the reader prepared.
func (c *conn) flushDone() {
	if c.done == nil {
		return
	}
	r := c.done
	c.done, c.doneTail, c.doneLen = nil, nil, 0
	c.enqueue(r, false)
}

// writeNB writes c.iovw without waiting, consuming what it wrote.
func (c *conn) writeNB() error {
	c.nbDone, c.nbErr = false, nil
	if err := c.rc.Write(c.writevFn); err != nil {
		return err
	}
	return c.nbErr
}

// writevNB is the RawConn.Write callback of writeNB: it always returns true
// (never wait for the socket to drain).
func (c *conn) writevNB(fd uintptr) bool {
	for len(c.iovw) > 0 {
		c.iovecs = c.iovecs[:0]
		for _, b := range c.iovw {
			if len(c.iovecs) == cap(c.iovecs) {
				break
			}
			if len(b) > 0 {
				v := syscall.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				c.iovecs = append(c.iovecs, v)
			}
		}
		if len(c.iovecs) == 0 {
			c.iovw = c.iovw[:0]
			break
		}
		// RawSyscall: the socket is non-blocking (see rawReader).
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&c.iovecs[0])), uintptr(len(c.iovecs)))
		switch e {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return true
		default:
			c.nbErr = e
			return true
		}
		consume(&c.iovw, int(n))
	}
	return true
}

// consume drops the first n bytes of v, as net.Buffers does while writing.
func consume(v *net.Buffers, n int) {
	for len(*v) > 0 {
		if n < len((*v)[0]) {
			(*v)[0] = (*v)[0][n:]
			return
		}
		n -= len((*v)[0])
		*v = (*v)[1:]
	}
}
