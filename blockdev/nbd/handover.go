package nbd

// Handover passes live connections to a successor process, so a daemon can
// be replaced under an attached device without the client ever seeing its
// socket close. That matters for the kernel's nbd driver: a request it has
// sent when a socket dies is resent only after the request timeout (600 s
// as uzram attaches), so under swap a plain restart stalls or fails I/O
// (docs/reliability.md). A handed-over socket stays open throughout:
// requests sent meanwhile wait in it, and the successor reads them.
//
// The old side stops each connection's reader at a request boundary, lets
// the workers send every reply, and gives back the socket (dup'ed) with the
// bytes it had read past the boundary. The new side adopts the socket in the
// transmission phase, those bytes first.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// HandedConn is one connection on its way to a successor.
type HandedConn struct {
	File     *os.File // the socket, dup'ed
	Export   string
	TFlags   uint16 // the transmission flags the client negotiated
	Leftover []byte // read from the socket but not yet served: the next requests' bytes
}

// errHandover ends a reader that stopped at a request boundary for a handover.
var errHandover = errors.New("nbd: connection handed over")

// handoverFinish bounds how long a reader caught mid-request by a handover
// waits for the rest of that request; a client that stalls longer is
// dropped instead of handed over.
const handoverFinish = 5 * time.Second

// handOver makes the reader stop at the next request boundary: its next
// read of the socket between requests fails with the deadline.
func (c *conn) handOver() {
	c.handingOver.Store(true)
	c.raw.SetReadDeadline(time.Now())
}

// stoppedForHandover reports whether err is the deadline handOver set.
func (c *conn) stoppedForHandover(err error) bool {
	return c.handingOver.Load() && errors.Is(err, os.ErrDeadlineExceeded)
}

// socketFile dup's the socket of a plain (not TLS) connection.
func (c *conn) socketFile() (*os.File, error) {
	if c.tls {
		return nil, errors.New("TLS connections cannot be handed over")
	}
	fc, ok := c.raw.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("a %T cannot be handed over", c.raw)
	}
	return fc.File()
}

// handedOver records c, stopped at a boundary with every reply sent, for
// Handover to return.
func (s *Server) handedOver(c *conn) {
	f, err := c.socketFile()
	if err != nil {
		s.log.Warn("connection dropped at handover", "conn", c.id, "err", err)
		return
	}
	h := HandedConn{File: f, Export: c.dev.Name(), TFlags: c.tflags,
		Leftover: append([]byte(nil), c.rx.buf[c.rx.start:c.rx.end]...)}
	s.mu.Lock()
	s.handed = append(s.handed, h)
	s.mu.Unlock()
}

// Handover stops the server for a successor: listeners stop accepting but
// stay open (the caller passes them on; connections that arrive meanwhile
// wait in their backlog), and every connection in transmission stops at a
// request boundary once all its replies are sent. It returns those
// connections; others (still negotiating, TLS, stalled mid-request) are
// closed. Like Shutdown, the server serves nothing afterwards.
func (s *Server) Handover(ctx context.Context) ([]HandedConn, error) {
	s.mu.Lock()
	s.handedOff = true
	s.mu.Unlock()
	done, err := s.stopServing(ctx, func(l net.Listener) {
		if dl, ok := l.(interface{ SetDeadline(time.Time) error }); ok {
			dl.SetDeadline(time.Now()) // Serve returns; the socket stays open
		} else {
			l.Close()
		}
	}, func(c *conn) {
		if c.dev != nil && !c.tls {
			c.handOver()
		} else {
			c.stop()
		}
	})
	<-done // also after a timeout: handedOver may still be adding to s.handed
	s.mu.Lock()
	h := s.handed
	s.handed = nil
	s.mu.Unlock()
	if err != nil {
		for _, c := range h {
			c.File.Close()
		}
		return nil, fmt.Errorf("nbd: handover: %w", err)
	}
	return h, nil
}

// Adopt serves a connection a predecessor handed over: already in the
// transmission phase, on export h.Export with the flags its client
// negotiated, reading h.Leftover before the socket. It takes h.File.
func (s *Server) Adopt(h HandedConn) error {
	nc, err := net.FileConn(h.File)
	h.File.Close()
	if err != nil {
		return fmt.Errorf("nbd: adopt connection: %w", err)
	}
	if len(h.Leftover) > transmitBuffer {
		nc.Close()
		return fmt.Errorf("nbd: adopt connection: %d leftover bytes, more than a receive buffer", len(h.Leftover))
	}
	c := s.newConn(nc)
	c.pending = h.Leftover
	s.mu.Lock()
	d := s.exports[h.Export]
	if d == nil || s.closing {
		s.mu.Unlock()
		nc.Close()
		return fmt.Errorf("nbd: adopt connection: no export %q", h.Export)
	}
	c.dev, c.tflags = d, h.TFlags
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.run(c, s.transmit)
	return nil
}
