// Package nbdclient is a small pipelining NBD client: fixed-newstyle
// handshake with NBD_OPT_GO, then READ, WRITE, FLUSH, TRIM and WRITE_ZEROES
// from any number of goroutines over one connection, replies matched by
// handle in whatever order the server sends them. uzram's tests and tools use
// it to drive the server through its public socket; go-nbd's client needs the
// kernel's nbd driver, which is not always there.
package nbdclient

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// Error is an NBD error reply.
type Error struct{ Code uint32 }

func (e *Error) Error() string {
	return fmt.Sprintf("nbd: server replied error %d (%s)", e.Code, proto.ErrName(e.Code))
}

// Code returns the NBD error code in err, or 0 if it is not an NBD error.
func Code(err error) uint32 {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// Export is what the server said about the export during the handshake.
type Export struct {
	Size                          uint64
	Flags                         uint16
	MinBlock, PrefBlock, MaxBlock uint32
}

type pending struct {
	buf  []byte // where a READ's payload goes
	done chan error
}

// Client is one NBD connection.
type Client struct {
	nc     net.Conn
	Export Export

	wmu    sync.Mutex
	mu     sync.Mutex
	pend   map[uint64]*pending
	next   uint64
	err    error
	closed chan struct{}
}

// Dial connects to an NBD server ("unix" or "tcp") and opens an export.
func Dial(network, addr, export string) (*Client, error) {
	nc, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	c, err := Handshake(nc, export)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// Handshake negotiates export on an open connection and starts the client.
func Handshake(nc net.Conn, export string) (*Client, error) {
	br := bufio.NewReader(nc)
	var hello [18]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		return nil, fmt.Errorf("nbd: read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[8:]) != proto.OptMagic {
		return nil, errors.New("nbd: server is not fixed-newstyle")
	}
	if _, err := nc.Write([]byte{0, 0, 0, 3}); err != nil { // FIXED_NEWSTYLE | NO_ZEROES
		return nil, fmt.Errorf("nbd: send flags: %w", err)
	}
	return handshakeGo(nc, br, export)
}

// SendOption writes one handshake option.
func SendOption(w io.Writer, opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(b, proto.OptMagic)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("nbd: send option %d: %w", opt, err)
	}
	return nil
}

// ReadOptionReply reads one option reply and returns its type and data.
func ReadOptionReply(r io.Reader) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: read option reply: %w", err)
	}
	if binary.BigEndian.Uint64(h[:]) != proto.OptReplyMagic {
		return 0, nil, errors.New("nbd: bad option reply magic")
	}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("nbd: option reply of %d bytes", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, fmt.Errorf("nbd: read option reply data: %w", err)
	}
	return binary.BigEndian.Uint32(h[12:]), data, nil
}

func (c *Client) readReplies(br *bufio.Reader) {
	var err error
	for {
		var h [16]byte
		if _, err = io.ReadFull(br, h[:]); err != nil {
			break
		}
		if binary.BigEndian.Uint32(h[:]) != proto.ReplyMagic {
			err = errors.New("nbd: bad reply magic")
			break
		}
		code := binary.BigEndian.Uint32(h[4:])
		handle := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		p := c.pend[handle]
		delete(c.pend, handle)
		c.mu.Unlock()
		if p == nil {
			err = fmt.Errorf("nbd: reply for unknown handle %d", handle)
			break
		}
		if code != 0 {
			p.done <- &Error{Code: code}
			continue
		}
		if len(p.buf) > 0 {
			if _, err = io.ReadFull(br, p.buf); err != nil {
				p.done <- err
				break
			}
		}
		p.done <- nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	c.mu.Lock()
	c.err = fmt.Errorf("nbd: connection lost: %w", err)
	for h, p := range c.pend {
		p.done <- c.err
		delete(c.pend, h)
	}
	c.mu.Unlock()
	close(c.closed)
}

// Do sends one request and waits for its reply. For a READ, buf receives
// the data; for a WRITE, buf is the payload. Raw fields are sent as given,
// so tests can send requests a well-behaved client never would.
func (c *Client) Do(typ, flags uint16, off uint64, length uint32, buf []byte) error {
	p := &pending{done: make(chan error, 1)}
	if typ == proto.CmdRead {
		p.buf = buf
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.next++
	handle := c.next
	c.pend[handle] = p
	c.mu.Unlock()
	hdr := make([]byte, 28, 28+len(buf))
	binary.BigEndian.PutUint32(hdr, proto.RequestMagic)
	binary.BigEndian.PutUint16(hdr[4:], flags)
	binary.BigEndian.PutUint16(hdr[6:], typ)
	binary.BigEndian.PutUint64(hdr[8:], handle)
	binary.BigEndian.PutUint64(hdr[16:], off)
	binary.BigEndian.PutUint32(hdr[24:], length)
	if typ == proto.CmdWrite {
		hdr = append(hdr, buf...)
	}
	c.wmu.Lock()
	_, err := c.nc.Write(hdr)
	c.wmu.Unlock()
	if err != nil {
		c.mu.Lock()
		delete(c.pend, handle)
		c.mu.Unlock()
		return fmt.Errorf("nbd: send request: %w", err)
	}
	return <-p.done
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off uint64) error {
	return c.Do(proto.CmdRead, 0, off, uint32(len(p)), p)
}

// WriteAt writes p at off.
func (c *Client) WriteAt(p []byte, off uint64) error {
	return c.Do(proto.CmdWrite, 0, off, uint32(len(p)), p)
}

// Trim discards n bytes at off.
func (c *Client) Trim(off uint64, n uint32) error { return c.Do(proto.CmdTrim, 0, off, n, nil) }

// WriteZeroes zeroes n bytes at off; noHole asks the server to keep them allocated.
func (c *Client) WriteZeroes(off uint64, n uint32, noHole bool) error {
	var f uint16
	if noHole {
		f = proto.CmdFlagNoHole
	}
	return c.Do(proto.CmdWriteZeroes, f, off, n, nil)
}

// Flush asks the server to make completed writes durable.
func (c *Client) Flush() error { return c.Do(proto.CmdFlush, 0, 0, 0, nil) }

// SendRaw writes bytes straight to the socket (for malformed-request tests).
func (c *Client) SendRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

// Closed is closed when the connection is lost.
func (c *Client) Closed() <-chan struct{} { return c.closed }

// Close sends NBD_CMD_DISC and closes the connection.
func (c *Client) Close() error {
	var hdr [28]byte
	binary.BigEndian.PutUint32(hdr[:], proto.RequestMagic)
	binary.BigEndian.PutUint16(hdr[6:], proto.CmdDisc)
	c.wmu.Lock()
	c.nc.Write(hdr[:])
	c.wmu.Unlock()
	return c.nc.Close()
}
