package blockdev

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
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
}

// keepBuffer bounds the buffer a recycled request keeps: 4 KiB and 128 KiB
// requests are the common case, 32 MiB ones are rare enough to reallocate.
const keepBuffer = 1 << 20

func (r *request) grow(n int) []byte {
	if cap(r.buf) < replyHeaderSize+n {
		r.buf = make([]byte, replyHeaderSize+n)
	}
	return r.buf[:replyHeaderSize+n]
}

// conn is one client connection.
type conn struct {
	srv *Server
	nc  net.Conn
	br  *bufio.Reader
	id  uint64

	dev    *Device
	tflags uint16

	wmu    sync.Mutex // one reply at a time on the socket
	free   chan *request
	work   chan *request
	broken atomic.Bool
}

// serveTransmission runs the transmission phase: this goroutine reads
// requests and never touches the store; workers run them and reply.
func (c *conn) serveTransmission() error {
	inflight := c.srv.opts.MaxInflight
	c.free = make(chan *request, inflight)
	c.work = make(chan *request, inflight)
	for i := 0; i < inflight; i++ {
		c.free <- &request{}
	}
	var workers sync.WaitGroup
	for i := 0; i < c.srv.opts.Workers; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for r := range c.work {
				c.handle(r)
				if cap(r.buf) > keepBuffer {
					r.buf = nil
				}
				c.free <- r
			}
		}()
	}
	err := c.readRequests()
	close(c.work)
	workers.Wait() // finish what was read before closing
	return err
}

func (c *conn) readRequests() error {
	for {
		r := <-c.free // waits when the client has MaxInflight requests out
		if _, err := io.ReadFull(c.br, r.hbuf[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // client closed between requests
			}
			return fmt.Errorf("blockdev: nbd: read request: %w", err)
		}
		hdr, err := ParseRequest(r.hbuf[:])
		if err != nil {
			return err // stream out of sync: only this connection ends
		}
		r.hdr = hdr
		if hdr.Type == cmdDisc {
			return nil
		}
		if n := hdr.PayloadLen(); n > 0 {
			buf := r.grow(n)
			if _, err := io.ReadFull(c.br, buf[replyHeaderSize:]); err != nil {
				return fmt.Errorf("blockdev: nbd: read %d byte write payload: %w", n, err)
			}
		}
		c.work <- r
	}
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
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken.Load() {
		return
	}
	if _, err := c.nc.Write(buf); err != nil {
		// The client cannot hear us any more; stop the reader too.
		c.broken.Store(true)
		c.nc.Close()
	}
}
