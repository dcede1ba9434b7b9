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
		// Waiting for budget is the server's doing, not a client stall.
		c.inRequest.Store(false)
		if err := c.acquire(r); err != nil {
			c.putFree(r)
			return err
		}
		if n := hdr.PayloadLen(); n > 0 {
			if n == blockdev.PageSize && c.rx.buffered() >= n && c.serveInline(r, c.rx.peek(n)) {
				// Stored straight from the receive buffer: no copy.
				c.rx.discard(n)
				c.doneAdded()
				continue
			}
			c.reqSeq.Add(1)
			c.inRequest.Store(true)
			buf := r.grow(n)
			if c.rx.buffered() < n {
				c.beforeBlock()
			}
			if err := c.readFull(buf[proto.ReplyHeaderSize:]); err != nil {
				c.budget.release(r.cost)
				c.srv.total.release(r.cost)
				r.cost = 0
				r.releaseBig()
				c.putFree(r)
				return fmt.Errorf("nbd: read %d byte write payload: %w", n, err)
			}
			c.inRequest.Store(false)
		}
		// Every eligible request is served inline, also with more waiting
		// behind it: on a 2-CPU host that measured better than sending the
		// rest to workers (0.71x randwrite). A single connection then
		// compresses on one CPU; the kernel's nbd-client spreads over
		// -connections.
		if c.serveInline(r, nil) {
			c.doneAdded()
			continue
		}
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

// acquire takes r's cost from the connection's budget, then the server's,
// waiting (and so not reading the socket) until both have room. Before
// waiting, the batch goes to the workers: their replies free budget.
func (c *conn) acquire(r *request) error {
	r.cost = cost(r.hdr)
	if c.budget.tryAcquire(r.cost) {
		if c.srv.total.tryAcquire(r.cost) {
			return nil
		}
		c.beforeBlock()
	} else {
		c.beforeBlock()
		if err := c.budget.acquire(r.cost, c.quit); err != nil {
			r.cost = 0
			return err
		}
	}
	if err := c.srv.total.acquire(r.cost, c.quit); err != nil {
		c.budget.release(r.cost)
		r.cost = 0
		return err
	}
	return nil
}

// readFull reads the rest of a request. A handover that catches the reader
// mid-request lets it finish the request: clients send requests whole, so
// the rest is on its way.
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
