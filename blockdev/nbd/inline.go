package nbd

import (
	"syscall"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/swapsafe"
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
	c.scratch = make([]byte, blockdev.PageSize)
	swapsafe.Prefault(c.scratch)
	c.iovecs = make([]syscall.Iovec, 0, min(inflight, iovMax))
	return nil
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
		if h.Length != blockdev.PageSize || h.Offset%blockdev.PageSize != 0 {
			return false
		}
		var ok bool
		var err error
		n := 0
		switch h.Type {
		case proto.CmdRead:
			buf := r.grow(blockdev.PageSize)
			ok, err = d.TryReadPage(buf[proto.ReplyHeaderSize:], h.Offset/blockdev.PageSize)
			n = blockdev.PageSize
		case proto.CmdWrite:
			if payload == nil {
				payload = r.buf[proto.ReplyHeaderSize:]
			}
			ok, err = d.TryWritePage(payload[:blockdev.PageSize], h.Offset/blockdev.PageSize, c.scratch)
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
