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
		if !r.own.put(r.big) {
			bigPools[bits.Len(uint(cap(*r.big)-1))].Put(r.big)
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
	l := &bigList{size: 1 << bits.Len(uint(replyHeaderSize+ownBigRequest-1)), bufs: make([]*[]byte, 0, n)}
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
	work   chan *request
	broken atomic.Bool

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
	quitOnce sync.Once
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
// requests and never touches the store; workers run them and reply.
func (c *conn) serveTransmission() error {
	inflight := c.srv.opts.MaxInflight
	c.budget = newBudget(c.srv.opts.ConnBudget)
	c.rx = newRxBuffer(c.br, transmitBuffer) // reads through what the handshake buffered
	c.free = make([]*request, inflight)
	c.tokens = make(chan struct{}, inflight)
	c.work = make(chan *request, inflight)
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
		go func() {
			defer workers.Done()
			for r := range c.work {
				c.handle(r) // queues the reply; the sender recycles r
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

func (c *conn) readRequests() error {
	for {
		select {
		case <-c.tokens: // waits when the client has MaxInflight requests out
		case <-c.quit:
			return errQuit
		}
		c.freeMu.Lock()
		r := c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
		c.freeMu.Unlock()
		// Idle until a request starts: no timeout applies here.
		if err := c.rx.waitData(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // client closed between requests
			}
			return fmt.Errorf("blockdev: nbd: read request: %w", err)
		}
		c.reqSeq.Add(1)
		c.inRequest.Store(true)
		if _, err := io.ReadFull(c.rx, r.hbuf[:]); err != nil {
			return fmt.Errorf("blockdev: nbd: read request: %w", err)
		}
		if c.srv.opts.Observe != nil {
			r.start = time.Now()
		}
		hdr, err := ParseRequest(r.hbuf[:])
		if err != nil {
			return err // stream out of sync: only this connection ends
		}
		r.hdr = hdr
		if hdr.Type == cmdDisc {
			return nil
		}
		// Waiting for budget is the server's doing, not a client stall.
		c.inRequest.Store(false)
		if err := c.acquire(r); err != nil {
			return err
		}
		if n := hdr.PayloadLen(); n > 0 {
			c.reqSeq.Add(1)
			c.inRequest.Store(true)
			buf := r.grow(n)
			if _, err := io.ReadFull(c.rx, buf[replyHeaderSize:]); err != nil {
				c.budget.release(r.cost)
				c.srv.total.release(r.cost)
				return fmt.Errorf("blockdev: nbd: read %d byte write payload: %w", n, err)
			}
			c.inRequest.Store(false)
		}
		c.work <- r
	}
}

// acquire takes r's cost from the connection's budget, then the server's,
// waiting (and so not reading the socket) until both have room.
func (c *conn) acquire(r *request) error {
	r.cost = r.hdr.cost()
	if err := c.budget.acquire(r.cost, c.quit); err != nil {
		r.cost = 0
		return err
	}
	if err := c.srv.total.acquire(r.cost, c.quit); err != nil {
		c.budget.release(r.cost)
		r.cost = 0
		return err
	}
	return nil
}

// handle runs one request and sends its reply.
func (c *conn) handle(r *request) {
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
			err = d.WriteAt(r.buf[replyHeaderSize:replyHeaderSize+int(h.Length)], h.Offset)
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
	c.reply(r, code, n)
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

func (c *conn) reply(r *request, code uint32, n int) {
	buf := r.grow(n)
	binary.BigEndian.PutUint32(buf[0:], replyMagic)
	binary.BigEndian.PutUint32(buf[4:], code)
	binary.BigEndian.PutUint64(buf[8:], r.hdr.Handle)
	if code != 0 {
		buf = buf[:replyHeaderSize] // an error reply carries no payload
	}
	r.out = buf
	c.sendMu.Lock()
	c.queue = append(c.queue, r)
	if c.sending {
		c.sendMu.Unlock() // the active sender will take it
		return
	}
	c.sending = true
	for len(c.queue) > 0 {
		batch := c.queue
		c.queue, c.spare = c.spare[:0], nil
		c.sendMu.Unlock()
		c.send(batch)
		c.sendMu.Lock()
		c.spare = batch[:0]
	}
	c.sending = false
	c.sendMu.Unlock()
}

// send writes a batch of replies in one writev and recycles their requests.
// Only the active sender calls it.
func (c *conn) send(batch []*request) {
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
		_, err := c.iovw.WriteTo(c.nc)
		c.writing.Store(false)
		c.replies.Add(uint64(len(batch)))
		if err != nil {
			// The client cannot hear us any more; stop the reader too.
			c.broken.Store(true)
			c.stop()
			c.raw.Close()
		}
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
