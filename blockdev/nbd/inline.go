package nbd

import (
	"syscall"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// Handing a request to a worker costs a goroutine wakeup, and often a
// thread wakeup and a context switch (worse when the server runs SCHED_RR:
// every wakeup preempts the client). Reading or writing one page is bounded
// CPU work, so the reader stores WRITEs itself, page by page from its
// receive buffer (writeStream), and on a plain socket serves one-page READs
// itself when the page's lock is free at once (a write holding it may be
// waiting for store memory). Streams are held only while compressing
// (writePage with scratch). Replies go out with a non-blocking writev: a
// full socket hands the rest to a worker, so the reader never waits for the
// client either.

// setupInline enables inline replies when the connection is a plain socket.
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
	c.iovecs = make([]syscall.Iovec, 0, min(inflight, iovMax))
	return nil
}

// serveInline serves r in the reader if it is a one-page READ whose page
// can be read without waiting, or a request that fails validation; it
// reports whether it did.
func (c *conn) serveInline(r *request) bool {
	if c.rc == nil {
		return false
	}
	h := &r.hdr
	d := c.dev
	if code := h.Validate(d.Size(), c.tflags); code != 0 {
		d.CountInvalid()
		c.prepareReply(r, code, 0)
	} else {
		if h.Type != proto.CmdRead || h.Length != blockdev.PageSize || h.Offset%blockdev.PageSize != 0 {
			return false
		}
		ok, err := d.TryReadPage(r.reply(blockdev.PageSize)[proto.ReplyHeaderSize:], h.Offset/blockdev.PageSize)
		if !ok {
			return false
		}
		code := errno(err)
		c.srv.count(h.Type, code)
		c.prepareReply(r, code, blockdev.PageSize)
	}
	c.readerDone(r)
	return true
}

// readerDone takes a request the reader has served, its reply prepared: on
// a plain socket the reader sends it (with others, once a batch's worth is
// ready or before it blocks); otherwise a worker sends it.
func (c *conn) readerDone(r *request) {
	if c.rc == nil {
		r.served = true
		c.batchAdd(r)
		return
	}
	if c.done == nil {
		c.done = r
	} else {
		c.doneTail.next = r
	}
	c.doneTail = r
	if c.doneLen++; c.doneLen >= batchMax {
		c.flushDone()
	}
}

// beforeBlock is called where the reader may wait (socket, tokens, the
// device): nothing it holds may wait with it.
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
