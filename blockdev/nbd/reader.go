package nbd

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// reader is what only a connection's reader goroutine touches, and the
// progress marks the watchdog reads.
type reader struct {
	// The batch being built: requests already complete in the receive
	// buffer go to a worker together, one wakeup for many (handing requests
	// over one by one cost a goroutine wakeup, often a thread switch, each).
	batch, batchTail *request
	batchLen         int

	// Requests the reader served itself (inline.go), their replies sent
	// before it blocks.
	done, doneTail *request
	doneLen        int
	scratch        []byte // the reader's compression output (Target.WriteAt)

	// The watchdog drops the connection when a request stays half received
	// for StallTimeout: inRequest says one is, reqSeq that it moved on.
	inRequest atomic.Bool
	reqSeq    atomic.Uint64
}

// batchMax bounds a batch: a deep queue is split between workers, so that
// several CPUs compress.
const batchMax = 8

func (c *conn) readRequests() error {
	defer c.beforeBlock() // what was read is served, however reading ends
	for {
		if c.handingOver.Load() {
			// A boundary: what rx holds beyond it goes to the successor.
			// Stopping here, not when rx runs dry, ends the handover even
			// while the client keeps sending.
			return errHandover
		}
		select {
		case <-c.tokens:
		default:
			// The client has MaxInflight requests out: let workers have
			// what we hold before waiting for one to finish.
			c.beforeBlock()
			select {
			case <-c.tokens:
			case <-c.quit:
				return errQuit
			}
		}
		c.freeMu.Lock()
		r := c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
		c.freeMu.Unlock()
		if c.rx.buffered() < proto.RequestHeaderSize {
			// The next read may block: nothing read may wait behind it.
			c.beforeBlock()
		}
		// Idle until a request starts: no timeout applies here.
		if err := c.rx.waitData(); err != nil {
			c.putFree(r)
			if c.stoppedForHandover(err) {
				return errHandover
			}
			if errors.Is(err, io.EOF) {
				return nil // client closed between requests
			}
			return fmt.Errorf("nbd: read request: %w", err)
		}
		c.reqSeq.Add(1)
		c.inRequest.Store(true)
		if err := c.readFull(r.hbuf[:]); err != nil {
			c.putFree(r)
			return fmt.Errorf("nbd: read request: %w", err)
		}
		c.inRequest.Store(false)
		if c.srv.opts.Observe != nil {
			r.start = time.Now()
		}
		hdr, err := proto.ParseRequest(r.hbuf[:])
		if err != nil {
			c.putFree(r)
			return err // stream out of sync: only this connection ends
		}
		r.hdr = hdr
		if hdr.Type == proto.CmdDisc {
			c.putFree(r)
			return nil
		}
		if hdr.Type == proto.CmdWrite {
			// Stored as it comes off the socket: no buffer holds the payload.
			if err := c.writeStream(r); err != nil {
				c.putFree(r)
				return fmt.Errorf("nbd: read %d byte write payload: %w", hdr.Length, err)
			}
			continue
		}
		// Every eligible request is served inline, also with more waiting
		// behind it: on a 2-CPU host that measured better than sending the
		// rest to workers (0.71x randwrite). A single connection then
		// compresses on one CPU; the kernel's nbd-client spreads over
		// -connections.
		if c.serveInline(r) {
			continue
		}
		c.batchAdd(r)
	}
}

// batchAdd adds r to the batch being built for a worker.
func (c *conn) batchAdd(r *request) {
	if c.batch == nil {
		c.batch = r
	} else {
		c.batchTail.next = r
	}
	c.batchTail = r
	if c.batchLen++; c.batchLen >= batchMax {
		c.dispatch()
	}
}

// dispatch hands the batch being built to a worker.
func (c *conn) dispatch() {
	if c.batch == nil {
		return
	}
	b := c.batch
	c.batch, c.batchTail, c.batchLen = nil, nil, 0
	c.work <- b // never blocks: the channel holds MaxInflight batches
}

// putFree gives back a request taken for a header that never became a
// request (the connection is ending).
func (c *conn) putFree(r *request) {
	c.freeMu.Lock()
	c.free = append(c.free, r)
	c.freeMu.Unlock()
	c.tokens <- struct{}{}
}

// readFull reads the rest of a request header. A handover that catches the
// reader mid-request lets it finish the request: clients send requests
// whole, so the rest is on its way.
func (c *conn) readFull(p []byte) error {
	n, err := io.ReadFull(c.rx, p)
	if err == nil || !c.stoppedForHandover(err) {
		return err
	}
	c.rx.err = nil
	c.raw.SetReadDeadline(time.Now().Add(handoverFinish))
	_, err = io.ReadFull(c.rx, p[n:])
	c.raw.SetReadDeadline(time.Now())
	return err
}

// need makes the next n bytes of the request (n <= PageSize) contiguous in
// the receive buffer, reading the socket as needed. Waiting for them is the
// client's doing: the watchdog sees a request half received, and every read
// that brings bytes counts as progress. A handover is handled as readFull
// does.
func (c *conn) need(n int) error {
	if c.rx.buffered() >= n {
		return nil
	}
	c.beforeBlock()
	c.reqSeq.Add(1)
	c.inRequest.Store(true)
	defer c.inRequest.Store(false)
	extended := false
	for c.rx.buffered() < n {
		err := c.rx.fill()
		if err == nil {
			c.reqSeq.Add(1)
			continue
		}
		if extended || !c.stoppedForHandover(err) {
			return err
		}
		c.rx.err = nil
		c.raw.SetReadDeadline(time.Now().Add(handoverFinish))
		extended = true
	}
	if extended {
		c.raw.SetReadDeadline(time.Now())
	}
	return nil
}

// writeStream serves a WRITE as its payload comes off the socket, a page
// (or the part of one at either end) at a time, so the payload is never
// held whole. A one-page WRITE is stored at once from the receive buffer
// when its lock is free and the store has memory ready, and otherwise
// copied into the request's own page for a worker. The pages of a larger
// WRITE are copied into the server's write pool for a worker while it has
// room, and stored by the reader itself, from the receive buffer, when it
// has none (waiting for the device if it must, after the replies and batch
// it holds have gone out). After the device's first error the rest of the
// payload is read and dropped. The error returned is the socket's (the
// connection ends); the device's is in the reply.
func (c *conn) writeStream(r *request) error {
	h := &r.hdr
	d := c.dev
	code := h.Validate(d.Size(), c.tflags)
	if code != 0 {
		d.CountInvalid()
	}
	one := uint64(h.Length) <= blockdev.PageSize-h.Offset%blockdev.PageSize // a single piece
	off, rest := h.Offset, int(h.Length)
	for rest > 0 {
		n := min(rest, blockdev.PageSize-int(off%blockdev.PageSize))
		if err := c.need(n); err != nil {
			c.dropPieces(r)
			return err
		}
		if code == 0 && r.werr == nil {
			c.writePiece(r, c.rx.peek(n), off, one)
		}
		c.rx.discard(n)
		off += uint64(n)
		rest -= n
	}
	if code == 0 && r.pieces != nil {
		c.batchAdd(r) // a worker stores the pieces and replies
		return nil
	}
	if code == 0 {
		code = errno(r.werr)
		r.werr = nil
		c.srv.count(h.Type, code)
	}
	c.prepareReply(r, code, 0)
	c.readerDone(r)
	return nil
}

// writePiece stores p (one page, or part of one) at off for r, or hands it
// to a worker.
func (c *conn) writePiece(r *request, p []byte, off uint64, one bool) {
	if one {
		if len(p) == blockdev.PageSize {
			if done, err := c.dev.TryWritePage(p, off/blockdev.PageSize, c.scratch); done {
				r.werr = err
				return
			}
		}
		pc := &r.own
		pc.buf, pc.n, pc.off = r.page[proto.ReplyHeaderSize:], copy(r.page[proto.ReplyHeaderSize:], p), off
		r.addPiece(pc)
		return
	}
	if pc := c.pool.get(); pc != nil {
		pc.n, pc.off = copy(pc.buf, p), off
		r.addPiece(pc)
		return
	}
	if len(p) == blockdev.PageSize {
		if done, err := c.dev.TryWritePage(p, off/blockdev.PageSize, c.scratch); done {
			r.werr = err
			return
		}
	}
	c.beforeBlock()
	r.werr = c.dev.WriteAt(p, off, c.scratch)
}

// dropPieces gives back the pieces of a WRITE that will not be stored.
func (c *conn) dropPieces(r *request) {
	for pc := r.pieces; pc != nil; {
		next := pc.next
		if pc.pooled {
			c.pool.put(pc)
		}
		pc = next
	}
	r.pieces, r.piecesTail, r.werr = nil, nil, nil
}
