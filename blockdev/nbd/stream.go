package nbd

import (
	"time"

	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// READs of more than a page are sent as they are decoded, from the worker's
// own chunk buffer (streamChunk): no per-request buffer holds their data,
// whatever the client asks for (up to proto.MaxRequestSize, 32 MiB). The
// worker decodes the first chunk, and only then takes the socket: a READ
// that fails there gets its error reply as usual, and READs up to a chunk
// (all of the kernel's) decode in parallel on several workers and hold the
// socket only to send. A larger READ decodes its other chunks while it
// holds the socket, so nothing can come between its parts; should one of
// them fail to decode, its header has already promised success, and the
// connection is dropped (a corrupt store, not a client's doing).

// readStream serves a READ of more than a page and recycles r.
func (c *conn) readStream(r *request, chunk []byte) {
	h := &r.hdr
	d := c.dev
	off, rest := h.Offset, int(h.Length)
	n := min(rest, streamChunk)
	if err := d.ReadAt(chunk[proto.ReplyHeaderSize:proto.ReplyHeaderSize+n], off); err != nil {
		code := errno(err)
		c.srv.count(h.Type, code)
		c.prepareReply(r, code, 0)
		c.enqueue(r, true)
		return
	}
	c.srv.count(h.Type, 0)
	putReplyHeader(chunk, 0, h.Handle)
	c.beginStream()
	err := c.streamOut(chunk[:proto.ReplyHeaderSize+n])
	for off, rest = off+uint64(n), rest-n; rest > 0 && err == nil; off, rest = off+uint64(n), rest-n {
		n = min(rest, streamChunk)
		if err = d.ReadAt(chunk[:n], off); err != nil {
			c.srv.log.Error("dropping connection: a READ failed after its reply began", "conn", c.id, "offset", off, "err", err)
			break
		}
		err = c.streamOut(chunk[:n])
	}
	c.writing.Store(false)
	c.replies.Add(1)
	if err != nil && !c.broken.Load() {
		c.broken.Store(true)
		c.stop()
		c.raw.Close()
	}
	if obs := c.srv.opts.Observe; obs != nil {
		obs(proto.CommandName(h.Type), time.Since(r.start))
	}
	c.recycle(r)
	c.endStream()
}

// streamOut writes part of a streamed reply; the caller holds the socket.
func (c *conn) streamOut(p []byte) error {
	if c.broken.Load() {
		return errQuit
	}
	c.writing.Store(true)
	_, err := c.nc.Write(p)
	return err
}

// beginStream makes the caller the connection's only sender, waiting for
// the active one to finish. A batch the reader could not finish sending
// (its handoff) is finished here rather than waited for: the worker meant
// to finish it may be this one.
func (c *conn) beginStream() {
	c.sendMu.Lock()
	for c.sending {
		if b := c.handoff; b != nil {
			c.handoff = nil
			c.sendMu.Unlock()
			c.completeHandoff(b) // clears sending, or passes it on
			c.sendMu.Lock()
			continue
		}
		c.sendIdle.Wait()
	}
	c.sending = true
	c.sendMu.Unlock()
}

// endStream gives the socket back, sending what was queued meanwhile.
func (c *conn) endStream() {
	c.sendMu.Lock()
	c.sendLoop(true)
}
