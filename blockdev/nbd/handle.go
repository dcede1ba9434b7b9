package nbd

import (
	"encoding/binary"
	"errors"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// handleBatch runs a batch's requests in order and sends their replies
// together (one writev when no other sender is active).
func (c *conn) handleBatch(r *request, scratch []byte) {
	head := r
	for ; r != nil; r = r.next {
		c.handle(r, scratch)
	}
	c.enqueue(head, true)
}

// handle runs one request and prepares its reply.
func (c *conn) handle(r *request, scratch []byte) {
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
			buf := r.grow(int(h.Length))
			// Success is decided before the header goes out: after it, the
			// only way to report an error would be to drop the connection.
			if err = d.ReadAt(buf[proto.ReplyHeaderSize:], h.Offset); err == nil {
				n = int(h.Length)
			}
		case proto.CmdWrite:
			err = d.WriteAt(r.buf[proto.ReplyHeaderSize:proto.ReplyHeaderSize+int(h.Length)], h.Offset, scratch)
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

// prepareReply fills r's reply header; enqueue sends it.
func (c *conn) prepareReply(r *request, code uint32, n int) {
	buf := r.grow(n)
	binary.BigEndian.PutUint32(buf[0:], proto.ReplyMagic)
	binary.BigEndian.PutUint32(buf[4:], code)
	binary.BigEndian.PutUint64(buf[8:], r.hdr.Handle)
	if code != 0 {
		buf = buf[:proto.ReplyHeaderSize] // an error reply carries no payload
	}
	r.out = buf
}
