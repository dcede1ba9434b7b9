package nbd

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// sender is a connection's reply path. Replies are sent by flat
// combining: a worker queues its reply, and the first one to find no sender
// active sends everything queued with one writev, including replies queued
// while it writes. Under load many replies share a syscall; alone, a reply
// goes out at once. The reader sends its own replies without blocking
// (writeNB): what the socket does not take is handed to a worker.
type sender struct {
	sendMu   sync.Mutex
	sendIdle sync.Cond // signalled when sending goes false (L is &sendMu)
	queue    []*request
	spare    []*request
	sending  bool
	iov      net.Buffers // reused: building it allocates nothing
	iovw     net.Buffers // what writev consumes: a copy of iov's header

	iovecs   []syscall.Iovec
	writevFn func(fd uintptr) bool // c.writevNB, made once
	nbErr    error                 // writevNB's result
	handoff  []*request            // a batch the reader began sending; a worker finishes it (under sendMu)
	sendTask request               // queued on work: finish handoff and go on sending

	// The watchdog drops the connection when a reply stays half sent for
	// StallTimeout: writing says one is, replies that it moved on.
	writing atomic.Bool
	replies atomic.Uint64
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
			c.sendMu.Lock()
			c.handoff = batch
			c.sendMu.Unlock()
			c.work <- &c.sendTask
			return
		}
		c.sendMu.Lock()
		c.spare = batch[:0]
	}
	c.sending = false
	c.sendIdle.Broadcast()
	c.sendMu.Unlock()
}

// finishHandoff completes the batch the reader could not send, unless a
// worker waiting to stream took it over (beginStream).
func (c *conn) finishHandoff() {
	c.sendMu.Lock()
	batch := c.handoff
	c.handoff = nil
	c.sendMu.Unlock()
	if batch != nil {
		c.completeHandoff(batch)
	}
}

// completeHandoff sends the rest of a handed-off batch and carries on as the
// sender.
func (c *conn) completeHandoff(batch []*request) {
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
			obs(proto.CommandName(r.hdr.Type), now.Sub(r.start))
		}
	}
	for _, r := range batch {
		c.recycle(r)
	}
}

// recycle returns a request whose reply is sent to the free list.
func (c *conn) recycle(r *request) {
	r.out = nil
	c.freeMu.Lock()
	c.free = append(c.free, r)
	c.freeMu.Unlock()
	c.tokens <- struct{}{}
}

// iovMax is Linux's IOV_MAX: the most buffers one writev takes.
const iovMax = 1024

// writeNB writes c.iovw without waiting, consuming what it wrote.
func (c *conn) writeNB() error {
	c.nbErr = nil
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
