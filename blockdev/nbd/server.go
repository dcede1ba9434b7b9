package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// ServerOptions tune the NBD server.
type ServerOptions struct {
	// MaxInflight is how many requests one connection may have outstanding;
	// the Linux driver keeps up to 128 in flight. Default 128. Each costs
	// its connection a page of buffer (buffers.go).
	MaxInflight int
	// Workers per connection run requests concurrently. Default 2 x GOMAXPROCS, at least 4.
	Workers int
	// ReadOnly exports refuse writes with EPERM.
	ReadOnly bool
	Logger   *slog.Logger
	// Observe, if set, is called for every request served with its command
	// name and the time from reading its header to sending its reply
	// (metrics). It runs on the reply path: keep it cheap.
	Observe func(cmd string, d time.Duration)
	// ConnEnded, if set, is called after each connection is closed (the
	// daemon gives the heap its buffers were back).
	ConnEnded func()

	// StallTimeout drops a connection whose request stays half received,
	// or whose reply stays unsent, this long. Default DefaultStallTimeout;
	// negative: never.
	StallTimeout time.Duration
	// HandshakeTimeout bounds the negotiation. Default
	// DefaultHandshakeTimeout; negative: never.
	HandshakeTimeout time.Duration

	// TLS, if set, is offered to clients with NBD_OPT_STARTTLS (tls.go).
	TLS *tls.Config
	// TLSRequired refuses every option but STARTTLS and ABORT until TLS is
	// up, on TCP connections (unix sockets are guarded by their file mode).
	TLSRequired bool
}

// Server serves devices over NBD. Any number of connections may share a
// device (CAN_MULTI_CONN: every write is visible to every connection when it
// is acknowledged).
type Server struct {
	opts ServerOptions
	log  *slog.Logger

	mu        sync.Mutex
	exports   map[string]blockdev.Target
	order     []string // export names, in the order they were added
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   bool
	// handedOff: stopped by Handover, whose caller passes the listeners on,
	// so a Serve that starts late must leave its listener open.
	handedOff bool
	handed    []HandedConn // connections stopped for a handover (handover.go)
	wg        sync.WaitGroup
	nextID    atomic.Uint64

	cmds [proto.CmdWriteZeroes + 1]cmdCounters

	tlsRejects logLimit // the log line of rejected TLS handshakes (tls.go)

	poolOnce  sync.Once
	writePool *pagePool // pool.go
	poolErr   error
}

type cmdCounters struct{ ok, failed atomic.Int64 }

// NewServer returns a server with no exports.
func NewServer(opts ServerOptions) *Server {
	if opts.MaxInflight <= 0 {
		opts.MaxInflight = 128
	}
	if opts.Workers <= 0 {
		opts.Workers = max(4, 2*runtime.GOMAXPROCS(0))
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.StallTimeout == 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	if opts.HandshakeTimeout == 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.TLSRequired && opts.TLS == nil {
		opts.Logger.Warn("TLS required but no certificate given: TCP clients cannot connect")
	}
	return &Server{
		opts:      opts,
		log:       opts.Logger,
		exports:   map[string]blockdev.Target{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}
}

// AddExport makes a device reachable under its name.
func (s *Server) AddExport(d blockdev.Target) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.exports[d.Name()]; dup {
		return fmt.Errorf("nbd: export %q already exists", d.Name())
	}
	s.exports[d.Name()] = d
	s.order = append(s.order, d.Name())
	return nil
}

// RemoveExport takes a device off the server. It is refused while a
// connection is attached to it.
func (s *Server) RemoveExport(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.exports[name]
	if !ok {
		return fmt.Errorf("nbd: no export named %q", name)
	}
	if n := s.attachedLocked(d); n > 0 {
		return fmt.Errorf("nbd: export %q is in use by %d connection(s)", name, n)
	}
	delete(s.exports, name)
	s.order = slices.DeleteFunc(s.order, func(n string) bool { return n == name })
	return nil
}

// Attached counts the connections in transmission on a device.
func (s *Server) Attached(d blockdev.Target) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attachedLocked(d)
}

func (s *Server) attachedLocked(d blockdev.Target) int {
	n := 0
	for c := range s.conns {
		if c.dev == d {
			n++
		}
	}
	return n
}

// lookup finds an export; the empty name is the default (first) export.
func (s *Server) lookup(name string) blockdev.Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "" && len(s.order) > 0 {
		name = s.order[0]
	}
	return s.exports[name]
}

func (s *Server) exportNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.order)
}

func (s *Server) tflags() uint16 {
	if s.opts.ReadOnly {
		return proto.TFlagHasFlags | proto.TFlagReadOnly | proto.TFlagSendFlush | proto.TFlagCanMultiConn
	}
	return proto.DefaultTransmissionFlags
}

// Serve accepts connections on l until Shutdown or Handover. It returns nil
// after either and the accept error otherwise. Shutdown closes l; Handover
// leaves it open for its caller to pass on, also when this Serve starts
// only after the Handover.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		if !s.handedOff {
			l.Close()
		}
		s.mu.Unlock()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or a transient error: wait, do not spin.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed, retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		backoff = 0
		s.ServeConn(nc)
	}
}

// ServeConn serves one connection in its own goroutine.
func (s *Server) ServeConn(nc net.Conn) {
	// The handshake reads through a small buffer; transmission stacks its
	// large one on top (serveTransmission), so a connection that never gets
	// past the handshake costs little.
	c := s.newConn(nc)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.run(c, s.serve)
}

func (s *Server) newConn(nc net.Conn) *conn {
	return &conn{srv: s, nc: nc, raw: nc, br: bufio.NewReaderSize(nc, handshakeBuffer), id: s.nextID.Add(1), quit: make(chan struct{})}
}

// run serves c with serve, registered in s.conns and s.wg by the caller,
// and forgets it afterwards.
func (s *Server) run(c *conn, serve func(*conn)) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.raw.Close()
		if s.opts.ConnEnded != nil {
			s.opts.ConnEnded()
		}
	}()
	serve(c)
}

func (s *Server) serve(c *conn) {
	if t := s.opts.HandshakeTimeout; t > 0 {
		c.setDeadline(time.Now().Add(t))
	}
	d, tflags, err := c.handshake()
	c.setDeadline(time.Time{})
	if err != nil {
		if !errors.Is(err, errAbort) {
			s.log.Debug("handshake ended", "conn", c.id, "err", err)
		}
		return
	}
	s.mu.Lock()
	// Re-check under mu: a reset may have removed the export while this
	// client negotiated. Either the removal sees this connection attached
	// and is refused, or this connection sees the export gone.
	if s.exports[d.Name()] != d {
		s.mu.Unlock()
		s.log.Debug("export removed during handshake", "conn", c.id, "export", d.Name())
		return
	}
	c.dev, c.tflags = d, tflags // under mu: Attached reads them
	s.mu.Unlock()
	s.log.Debug("client attached", "conn", c.id, "export", d.Name())
	s.transmit(c)
}

// transmit runs c's transmission phase; c.dev and c.tflags are set.
func (s *Server) transmit(c *conn) {
	err := c.serveTransmission()
	switch {
	case errors.Is(err, errHandover):
		s.handedOver(c)
	case err != nil && !c.broken.Load() && !s.isClosing():
		s.log.Warn("connection closed", "conn", c.id, "export", c.dev.Name(), "err", err)
	}
	c.bufs.free() // every worker is done, and handedOver has copied rx
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown stops accepting, lets every connection finish the requests it has
// already read, then closes them. It returns ctx's error if that takes too long.
func (s *Server) Shutdown(ctx context.Context) error {
	// stop wakes readers blocked on the socket or on tokens; workers still reply.
	if _, err := s.stopServing(ctx, func(l net.Listener) { l.Close() }, (*conn).stop); err != nil {
		return fmt.Errorf("nbd: shutdown: %w", err)
	}
	return nil
}

// stopServing marks s closing, applies stopL to every listener and stopC to
// every connection, and waits for the connections to end. If ctx ends
// first it closes their sockets and returns ctx's error; done is closed
// once they have all ended.
func (s *Server) stopServing(ctx context.Context, stopL func(net.Listener), stopC func(*conn)) (done <-chan struct{}, err error) {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		stopL(l)
	}
	for c := range s.conns {
		stopC(c)
	}
	s.mu.Unlock()
	ended := make(chan struct{})
	go func() { s.wg.Wait(); close(ended) }()
	select {
	case <-ended:
		return ended, nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.raw.Close()
		}
		s.mu.Unlock()
		return ended, ctx.Err()
	}
}

func (s *Server) count(typ uint16, code uint32) {
	if int(typ) >= len(s.cmds) {
		return
	}
	if code == 0 {
		s.cmds[typ].ok.Add(1)
	} else {
		s.cmds[typ].failed.Add(1)
	}
}

// CommandCounts reports requests served per command name, split by outcome.
func (s *Server) CommandCounts() map[string][2]int64 {
	out := map[string][2]int64{}
	for t := range s.cmds {
		ok, failed := s.cmds[t].ok.Load(), s.cmds[t].failed.Load()
		if ok+failed > 0 {
			out[proto.CommandName(uint16(t))] = [2]int64{ok, failed}
		}
	}
	return out
}
