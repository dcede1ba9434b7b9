package nbd

import (
	"encoding/binary"
	"errors"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// handleBatch runs a batch's requests in order and sends their replies
// together (one writev when no other sender is active). A large READ sends
// its own reply as it decodes (stream.go) and leaves the batch.
func (c *conn) handleBatch(r *request, scratch []byte) {
	var head, tail *request
	for r != nil {
		next := r.next
		r.next = nil
		if c.handle(r, scratch) {
			if head == nil {
				head = r
			} else {
				tail.next = r
			}
			tail = r
		}
		r = next
	}
	if head != nil {
		c.enqueue(head, true)
	}
}

// handle runs one request and prepares its reply; it reports false when it
// has sent the reply itself (a READ of more than a page). scratch is the
// worker's compression output.
func (c *conn) handle(r *request, scratch []byte) bool {
	if r.served {
		r.served = false
		return true
	}
	if r.pieces != nil {
		c.storePieces(r, scratch)
		return true
	}
	h := &r.hdr
	d := c.dev
	code := h.Validate(d.Size(), c.tflags)
	var n int
	if code != 0 {
		d.CountInvalid()
	} else {
		var err error
		switch h.Type {
		case proto.CmdRead:
			if h.Length > blockdev.PageSize {
				chunk := <-c.chunks
				c.readStream(r, chunk)
				c.chunks <- chunk
				return false
			}
			// Success is decided before the header goes out: after it, the
			// only way to report an error would be to drop the connection.
			if err = d.ReadAt(r.reply(int(h.Length))[proto.ReplyHeaderSize:], h.Offset); err == nil {
				n = int(h.Length)
			}
		case proto.CmdFlush:
			// Every write is in memory when it is acknowledged: nothing to do.
		case proto.CmdTrim:
			err = d.Discard(h.Offset, uint64(h.Length))
		case proto.CmdWriteZeroes:
			err = d.WriteZeroes(h.Offset, uint64(h.Length), h.Flags&proto.CmdFlagNoHole != 0)
		}
		code = errno(err)
		c.srv.count(h.Type, code)
	}
	c.prepareReply(r, code, n)
	return true
}

// storePieces stores the pieces of a WRITE the reader handed over (after
// any it stored itself) and prepares the reply.
func (c *conn) storePieces(r *request, scratch []byte) {
	err := r.werr
	for pc := r.pieces; pc != nil; {
		next := pc.next
		if err == nil {
			err = c.dev.WriteAt(pc.buf[:pc.n], pc.off, scratch)
		}
		if pc.pooled {
			c.pool.put(pc)
		}
		pc = next
	}
	r.pieces, r.piecesTail, r.werr = nil, nil, nil
	code := errno(err)
	c.srv.count(proto.CmdWrite, code)
	c.prepareReply(r, code, 0)
}

// errno maps a device error to the NBD error reply.
func errno(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, blockdev.ErrNoSpace):
		return proto.ErrNoSpc
	case errors.Is(err, blockdev.ErrRange):
		return proto.ErrInval
	default:
		return proto.ErrIO
	}
}

// prepareReply fills r's reply header, followed by n bytes of data already
// in its buffer (n <= PageSize); enqueue sends it.
func (c *conn) prepareReply(r *request, code uint32, n int) {
	if code != 0 {
		n = 0 // an error reply carries no payload
	}
	buf := r.reply(n)
	putReplyHeader(buf, code, r.hdr.Handle)
	r.out = buf
}

// putReplyHeader writes a simple reply's header at the start of buf.
func putReplyHeader(buf []byte, code uint32, handle uint64) {
	binary.BigEndian.PutUint32(buf[0:], proto.ReplyMagic)
	binary.BigEndian.PutUint32(buf[4:], code)
	binary.BigEndian.PutUint64(buf[8:], handle)
}
