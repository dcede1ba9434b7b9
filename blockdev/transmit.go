package blockdev

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// request is one in-flight NBD request. A connection owns a fixed set of
// them, recycled through a free list, so the steady state allocates nothing.
type request struct {
	hdr  Request
	hbuf [requestHeaderSize]byte
	// buf holds the reply header (16 bytes) and then the payload: a READ's
	// data goes out with its header in one write, a WRITE's data is read
	// straight into it.
	buf []byte
	// small is the request's own buffer, enough for a 4 KiB page; larger
	// requests borrow big from a shared pool until their reply is sent, so
	// a burst of 128 KiB writes does not leave every request of every
	// connection holding 128 KiB.
	small []byte
	big   *[]byte
	own   *bigList // the connection's prefaulted big buffers, used first
	// out is the reply (header and payload) waiting in the send queue.
	out []byte
	// cost is the budget it holds until its reply is sent (limits.go).
	cost int64
	// start is when its header was read, for ServerOptions.Observe.
	start time.Time
	// next links the requests of one batch handed to a worker.
	next *request
}

const smallBuffer = replyHeaderSize + PageSize

// bigPools hold buffers of 2^i bytes for requests larger than a page. A
// sync.Pool gives memory back to the GC when it sits unused.
var bigPools [27]sync.Pool // up to 2^26 >= MaxRequestSize + header

// grow returns r's buffer with room for the reply header and n bytes.
func (r *request) grow(n int) []byte {
	need := replyHeaderSize + n
	if need <= smallBuffer {
		if r.small == nil {
			r.small = make([]byte, smallBuffer)
		}
		r.buf = r.small
		return r.buf[:need]
	}
	if r.big == nil || cap(*r.big) < need {
		r.releaseBig()
		i := bits.Len(uint(need - 1))
		if b := r.own.get(need); b != nil {
			r.big = b
		} else if b, ok := bigPools[i].Get().(*[]byte); ok {
			r.big = b
		} else {
			b := make([]byte, 1<<i)
			r.big = &b
		}
	}
	r.buf = *r.big
	return r.buf[:need]
}

// releaseBig hands a borrowed buffer back to its pool.
func (r *request) releaseBig() {
	if r.big != nil {
		// A pool holds only its own power of two: a buffer of any other
		// size (an own one the list had no room for) is left to the GC.
		if c := cap(*r.big); !r.own.put(r.big) && c&(c-1) == 0 {
			bigPools[bits.Len(uint(c-1))].Put(r.big)
		}
		r.big = nil
	}
	r.buf = r.small
}

// The kernel's swap writeback sends requests of up to max_sectors_kb (128
// KiB for nbd), not only single pages: each would take a fresh buffer from
// bigPools and fault it in while reading the payload, the fault a swap
// server must not take (hack/guest-README.md). So every connection keeps
// ownBigCount buffers of that class, prefaulted at connection start, that
// stay with it (a sync.Pool drops its buffers at GC).
const (
	ownBigRequest = 128 << 10
	ownBigCount   = 16
)

// bigList is a connection's own prefaulted big buffers, all of one size.
type bigList struct {
	mu   sync.Mutex
	size int
	bufs []*[]byte
}

func newBigList(n int) *bigList {
	// Exactly a 128 KiB request and its reply header, not the next power of
	// two the shared pools use: half the memory, and a size no pool buffer
	// has, so put never takes a stranger in.
	l := &bigList{size: replyHeaderSize + ownBigRequest, bufs: make([]*[]byte, 0, n)}
	for i := 0; i < n; i++ {
		b := make([]byte, l.size)
		prefault(b)
		l.bufs = append(l.bufs, &b)
	}
	return l
}

// get pops a buffer with room for need bytes, or returns nil.
func (l *bigList) get(need int) *[]byte {
	if l == nil || need > l.size {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.bufs)
	if n == 0 {
		return nil
	}
	b := l.bufs[n-1]
	l.bufs = l.bufs[:n-1]
	return b
}

// put takes back a buffer of its size while it has room.
func (l *bigList) put(b *[]byte) bool {
	if l == nil || cap(*b) != l.size {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.bufs) == cap(l.bufs) {
		return false
	}
	l.bufs = append(l.bufs, b)
	return true
}

// Buffer sizes: the handshake's is small so that idle or hostile
// connections cost little; transmission stacks a large one on top.
const (
	handshakeBuffer = 4 << 10
	transmitBuffer  = 256 << 10
)

// conn is one client connection.
type conn struct {
	srv *Server
	nc  net.Conn      // the stream: the socket, or TLS over it after STARTTLS
	raw net.Conn      // the socket itself: deadlines and Close
	br  *bufio.Reader // the handshake's
	rx  *rxBuffer     // transmission's: prefaulted
	id  uint64
	tls bool // STARTTLS done

	dev    *Device
	tflags uint16

	// The free requests, last in first out, so a connection that keeps a
	// few requests in flight reuses the same few (and their buffers).
	// tokens counts them: the reader waits on it when the client has
	// MaxInflight requests out.
	freeMu sync.Mutex
	free   []*request
	tokens chan struct{}
	work   chan *request // batches: lists linked by request.next
	broken atomic.Bool

	// The batch the reader is building: requests already complete in the
	// receive buffer go to a worker together, one wakeup for many (handing
	// requests over one by one cost a goroutine wakeup, often a thread
	// switch, each).
	batch, batchTail *request
	batchLen         int

	// Inline serving (inline.go): on a plain socket the reader serves
	// one-page READs and WRITEs itself when nothing would make it wait, and
	// sends replies without blocking; rc is nil otherwise (TLS, net.Pipe)
	// and everything goes to workers.
	rc             syscall.RawConn
	done, doneTail *request // replies the reader prepared, sent before it blocks
	doneLen        int
	iovecs         []syscall.Iovec
	scratch        []byte                // the reader's compression output (writePage)
	writevFn       func(fd uintptr) bool // c.writevNB, made once
	nbDone         bool                  // writevNB's results
	nbErr          error
	handoff        []*request // a batch the reader began sending; a worker finishes it
	sendTask       request    // queued on work: finish handoff and go on sending

	// Replies are sent by flat combining: a worker queues its reply, and the
	// first one to find no sender active sends everything queued with one
	// writev, including replies queued while it writes. Under load many
	// replies share a syscall; alone, a reply goes out at once.
	sendMu  sync.Mutex
	queue   []*request
	spare   []*request
	sending bool
	iov     net.Buffers // reused: building it allocates nothing
	iovw    net.Buffers // what writev consumes: a copy of iov's header

	budget *budget // this connection's in-flight request bytes
	// The watchdog drops the connection when a request stays half received
	// or a reply half sent for StallTimeout: it watches these.
	inRequest, writing atomic.Bool
	reqSeq, replies    atomic.Uint64

	stopping atomic.Bool
	quit     chan struct{} // closed by stop

	handingOver atomic.Bool // stop at the next request boundary (handover.go)
	pending     []byte      // an adopted connection's first bytes
	quitOnce    sync.Once
}

// stop wakes the reader wherever it waits (socket or budget); workers still
// send the replies of requests already read. Deadlines set after stop must
// re-check stopping (see clearDeadline).
func (c *conn) stop() {
	c.stopping.Store(true)
	c.quitOnce.Do(func() { close(c.quit) })
	c.raw.SetReadDeadline(time.Now())
}

// setDeadline sets the socket's deadline (zero: none) without undoing a
// concurrent stop: stop sets stopping before its deadline, so one of the two
// always sees the other.
func (c *conn) setDeadline(t time.Time) {
	c.raw.SetDeadline(t)
	if c.stopping.Load() {
		c.raw.SetReadDeadline(time.Now())
	}
}

// serveTransmission runs the transmission phase: this goroutine reads
// requests and never waits on the store: it serves itself only what needs
// no waiting (inline.go); workers run the rest and reply.
func (c *conn) serveTransmission() error {
	inflight := c.srv.opts.MaxInflight
	c.budget = newBudget(c.srv.opts.ConnBudget)
	c.rx = newRxBuffer(c.br, transmitBuffer) // reads through what the handshake buffered
	c.free = make([]*request, inflight)
	c.tokens = make(chan struct{}, inflight)
	c.work = make(chan *request, inflight+1) // batches, and one sendTask
	if err := c.setupInline(inflight); err != nil {
		return err
	}
	c.rx.end += copy(c.rx.buf[c.rx.end:], c.pending) // Adopt checked it fits
	c.pending = nil
	c.queue = make([]*request, 0, inflight)
	c.spare = make([]*request, 0, inflight)
	c.iov = make(net.Buffers, 0, inflight)
	own := newBigList(min(ownBigCount, inflight))
	for i := range c.free {
		// Every request's page buffer exists, touched, before the first
		// request: the kernel sends swap I/O as single pages, and writeback
		// as runs of up to 128 KiB (own).
		c.free[i] = &request{small: make([]byte, smallBuffer), own: own}
		prefault(c.free[i].small)
		c.tokens <- struct{}{}
	}
	var workers sync.WaitGroup
	for i := 0; i < c.srv.opts.Workers; i++ {
		workers.Add(1)
		// Each worker compresses into its own scratch page (writePage),
		// touched now like every buffer of the path.
		scratch := make([]byte, PageSize)
		prefault(scratch)
		go func() {
			defer workers.Done()
			for r := range c.work {
				if r == &c.sendTask {
					c.finishHandoff()
					continue
				}
				c.handleBatch(r, scratch) // queues the replies; the sender recycles them
			}
		}()
	}
	done := make(chan struct{})
	if stall := c.srv.opts.StallTimeout; stall > 0 {
		go c.watchdog(stall, done)
	}
	err := c.readRequests()
	close(c.work)
	workers.Wait() // finish what was read before closing
	close(done)
	return err
}

// watchdog drops the connection when one request has been half received, or
// one reply half sent, for about stall: a client that stalls mid-request
// must not hold its buffers and budget forever. It costs the I/O path only a
// few atomic operations (no per-request deadlines or clock reads).
func (c *conn) watchdog(stall time.Duration, done <-chan struct{}) {
	const checks = 4
	t := time.NewTicker(stall / checks)
	defer t.Stop()
	var lastReq, lastReply uint64
	var reqTicks, replyTicks int
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		seq, rep := c.reqSeq.Load(), c.replies.Load()
		reqTicks = stalledTicks(c.inRequest.Load() && seq == lastReq, reqTicks)
		replyTicks = stalledTicks(c.writing.Load() && rep == lastReply, replyTicks)
		lastReq, lastReply = seq, rep
		if reqTicks >= checks || replyTicks >= checks {
			what := "a request stayed half received"
			if replyTicks >= checks {
				what = "a reply stayed unsent"
			}
			c.srv.log.Warn("dropping stalled connection", "conn", c.id, "why", what, "timeout", stall)
			c.broken.Store(true)
			c.stop()
			c.raw.Close()
			return
		}
	}
}

func stalledTicks(stalled bool, n int) int {
	if stalled {
		return n + 1
	}
	return 0
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
		if c.rx.buffered() < requestHeaderSize {
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
			return fmt.Errorf("blockdev: nbd: read request: %w", err)
		}
		c.reqSeq.Add(1)
		c.inRequest.Store(true)
		if err := c.readFull(r.hbuf[:]); err != nil {
			c.putFree(r)
			return fmt.Errorf("blockdev: nbd: read request: %w", err)
		}
		if c.srv.opts.Observe != nil {
			r.start = time.Now()
		}
		hdr, err := ParseRequest(r.hbuf[:])
		if err != nil {
			c.putFree(r)
			return err // stream out of sync: only this connection ends
		}
		r.hdr = hdr
		if hdr.Type == cmdDisc {
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
			if n == PageSize && c.rx.buffered() >= n && c.serveInline(r, c.rx.peek(n)) {
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
			if err := c.readFull(buf[replyHeaderSize:]); err != nil {
				c.budget.release(r.cost)
				c.srv.total.release(r.cost)
				r.cost = 0
				r.releaseBig()
				c.putFree(r)
				return fmt.Errorf("blockdev: nbd: read %d byte write payload: %w", n, err)
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
	r.cost = r.hdr.cost()
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
		case cmdRead:
			buf := r.grow(int(h.Length))
			// Success is decided before the header goes out: after it, the
			// only way to report an error would be to drop the connection.
			if err = d.ReadAt(buf[replyHeaderSize:], h.Offset); err == nil {
				n = int(h.Length)
			}
		case cmdWrite:
			err = d.writeAt(r.buf[replyHeaderSize:replyHeaderSize+int(h.Length)], h.Offset, scratch)
		case cmdFlush:
			// Every write is in memory when it is acknowledged: nothing to do.
		case cmdTrim:
			err = d.Discard(h.Offset, uint64(h.Length), false)
		case cmdWriteZeroes:
			err = d.Discard(h.Offset, uint64(h.Length), h.Flags&cmdFlagNoHole != 0)
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
	case errors.Is(err, ErrNoSpace):
		return errNoSpc
	case errors.Is(err, ErrRange):
		return errInval
	default:
		return errIO
	}
}

// prepareReply fills r's reply header; enqueue sends it.
func (c *conn) prepareReply(r *request, code uint32, n int) {
	buf := r.grow(n)
	binary.BigEndian.PutUint32(buf[0:], replyMagic)
	binary.BigEndian.PutUint32(buf[4:], code)
	binary.BigEndian.PutUint64(buf[8:], r.hdr.Handle)
	if code != 0 {
		buf = buf[:replyHeaderSize] // an error reply carries no payload
	}
	r.out = buf
}

// enqueue queues the prepared replies of a list of requests and sends them
// unless another sender is active. With block false (the reader) it never
// waits for the socket: what does not fit goes to a worker.
func (c *conn) enqueue(r *request, block bool) {
	c.sendMu.Lock()
	for r != nil {
		next := r.next
		r.next = nil
		c.queue = append(c.queue, r)
		r = next
	}
	if c.sending {
		c.sendMu.Unlock() // the active sender will take them
		return
	}
	c.sending = true
	c.sendLoop(block)
}

// sendLoop sends everything queued, including replies queued while it
// writes. Called by the sender with sendMu held; returns with it released.
func (c *conn) sendLoop(block bool) {
	for len(c.queue) > 0 {
		batch := c.queue
		c.queue, c.spare = c.spare[:0], nil
		c.sendMu.Unlock()
		if !c.send(batch, block) {
			// The socket is full: a worker finishes the batch and stays
			// the sender (sending remains true meanwhile).
			c.handoff = batch
			c.work <- &c.sendTask
			return
		}
		c.sendMu.Lock()
		c.spare = batch[:0]
	}
	c.sending = false
	c.sendMu.Unlock()
}

// finishHandoff completes the batch the reader could not send and carries
// on as the sender.
func (c *conn) finishHandoff() {
	batch := c.handoff
	c.handoff = nil
	var err error
	if !c.broken.Load() {
		_, err = c.iovw.WriteTo(c.nc)
	}
	c.sent(batch, err)
	c.sendMu.Lock()
	c.spare = batch[:0]
	c.sendLoop(true)
}

// send writes a batch of replies in one writev and recycles their requests.
// Only the active sender calls it. Without block it reports false, with
// the rest of the batch unsent in c.iovw, when the socket is full.
func (c *conn) send(batch []*request, block bool) bool {
	var err error
	if !c.broken.Load() {
		c.iov = c.iov[:0]
		for _, r := range batch {
			c.iov = append(c.iov, r.out)
		}
		// WriteTo consumes the slice it is called on: a copy of the header
		// (in the conn, so it does not escape to the heap) keeps c.iov's
		// capacity, and the next batch appends without allocating. A
		// shrinking c.iov reallocated on every few replies, and heap growth
		// is fresh memory the server must not fault on under swap.
		c.iovw = c.iov
		c.writing.Store(true)
		if block {
			_, err = c.iovw.WriteTo(c.nc)
		} else if err = c.writeNB(); err == nil && len(c.iovw) > 0 {
			return false // still writing: the watchdog watches the worker
		}
	}
	c.sent(batch, err)
	return true
}

// sent finishes a batch whose write ended with err.
func (c *conn) sent(batch []*request, err error) {
	c.writing.Store(false)
	c.replies.Add(uint64(len(batch)))
	if err != nil && !c.broken.Load() {
		// The client cannot hear us any more; stop the reader too.
		c.broken.Store(true)
		c.stop()
		c.raw.Close()
	}
	if obs := c.srv.opts.Observe; obs != nil {
		now := time.Now()
		for _, r := range batch {
			obs(CommandName(r.hdr.Type), now.Sub(r.start))
		}
	}
	for _, r := range batch {
		c.recycle(r)
	}
}

// recycle returns a request whose reply is sent to the free list.
func (c *conn) recycle(r *request) {
	c.budget.release(r.cost)
	c.srv.total.release(r.cost)
	r.cost, r.out = 0, nil
	r.releaseBig()
	c.freeMu.Lock()
	c.free = append(c.free, r)
	c.freeMu.Unlock()
	c.tokens <- struct{}{}
}
