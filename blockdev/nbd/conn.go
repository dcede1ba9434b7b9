package nbd

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/uzram/uzram/blockdev"
)

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

	dev    blockdev.Target
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

	// rc is the raw socket (inline serving: the reader serves one-page
	// READs and WRITEs itself and replies go out without blocking); nil
	// on TLS or net.Pipe, where everything goes to workers.
	rc syscall.RawConn

	reader // the reader goroutine's own state (reader.go)
	sender // the reply path's (sender.go)

	bufs   *connBuffers // every buffer of the transmission phase (buffers.go)
	chunks chan []byte  // bufs.chunks not in use by a streamed READ
	pool   *pagePool    // the server's write pages (pool.go)

	stopping atomic.Bool
	quit     chan struct{} // closed by stop

	handingOver atomic.Bool // stop at the next request boundary (handover.go)
	pending     []byte      // an adopted connection's first bytes
	quitOnce    sync.Once
}

// stop wakes the reader wherever it waits (socket or tokens); workers still
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
// requests and stores WRITEs, waiting on the store only when the write
// pool is full (reader.go); workers run the rest and reply.
func (c *conn) serveTransmission() error {
	inflight, nworkers := c.srv.opts.MaxInflight, c.srv.opts.Workers
	bufs, err := newConnBuffers(inflight, nworkers)
	if err != nil {
		return err
	}
	c.bufs = bufs // freed by transmit, once handedOver has read rx
	if c.pool, err = c.srv.pool(); err != nil {
		return err
	}
	c.rx = newRxBuffer(c.br, bufs.rx) // reads through what the handshake buffered
	c.free = make([]*request, inflight)
	c.tokens = make(chan struct{}, inflight)
	c.work = make(chan *request, inflight+1) // batches, and one sendTask
	c.sendIdle.L = &c.sendMu
	c.scratch = bufs.scratch[0]
	c.chunks = make(chan []byte, len(bufs.chunks))
	for _, b := range bufs.chunks {
		c.chunks <- b
	}
	if err := c.setupInline(inflight); err != nil {
		return err
	}
	c.rx.end += copy(c.rx.buf[c.rx.end:], c.pending) // Adopt checked it fits
	c.pending = nil
	c.queue = make([]*request, 0, inflight)
	c.spare = make([]*request, 0, inflight)
	c.iov = make(net.Buffers, 0, inflight)
	for i := range c.free {
		c.free[i] = &request{page: bufs.pages[i]}
		c.tokens <- struct{}{}
	}
	var workers sync.WaitGroup
	for i := 0; i < nworkers; i++ {
		workers.Add(1)
		scratch := bufs.scratch[1+i]
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
	err = c.readRequests()
	close(c.work)
	workers.Wait() // finish what was read before closing
	close(done)
	return err
}

// watchdog drops the connection when one request has been half received, or
// one reply half sent, for about stall: a client that stalls mid-request
// must not hold its connection forever. It costs the I/O path only a
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
