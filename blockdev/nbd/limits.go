package nbd

import (
	"errors"
	"sync"
	"time"

	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// Limits that keep one client (or many) from exhausting the daemon: the
// memory its requests pin, and how long a half-sent request or an unread
// reply may hold a connection's resources.
//
// Every in-flight request holds bytes of its connection's budget and of the
// server's budget, from the moment its header is read until its reply is
// sent: a WRITE's payload and a READ's data both live in a buffer of that
// size. When a budget is spent, the connection's reader waits before reading
// the payload (backpressure: the client's socket fills up and it stops
// sending); no request ever fails for lack of budget, since both budgets are
// at least proto.MaxRequestSize.
const (
	// DefaultConnBudget bounds one connection's in-flight request bytes:
	// the kernel's 128 requests of 128 KiB fit four times over.
	DefaultConnBudget = 64 << 20
	// DefaultTotalBudget bounds all connections together.
	DefaultTotalBudget = 256 << 20
	// DefaultStallTimeout is how long a request may stay half received
	// (header started, payload not complete) or a reply half sent before
	// the connection is dropped. An idle connection (nothing started) is
	// never timed out: the kernel keeps swap connections idle for hours.
	DefaultStallTimeout = 60 * time.Second
	// DefaultHandshakeTimeout bounds the whole negotiation, so clients that
	// connect and say nothing do not pile up.
	DefaultHandshakeTimeout = 30 * time.Second
)

// errQuit means the connection ended while its reader waited for budget.
var errQuit = errors.New("nbd: connection closing")

// budget is a FIFO weighted semaphore: waiters are served in arrival order,
// so a large request is not starved by a stream of small ones.
type budget struct {
	mu      sync.Mutex
	avail   int64
	size    int64
	waiters []*budgetWaiter
}

type budgetWaiter struct {
	n     int64
	ready chan struct{}
}

func newBudget(size int64) *budget { return &budget{avail: size, size: size} }

// acquire takes n bytes (n <= size), waiting until they are free or quit is
// closed.
func (b *budget) acquire(n int64, quit <-chan struct{}) error {
	if n <= 0 {
		return nil
	}
	b.mu.Lock()
	if len(b.waiters) == 0 && b.avail >= n {
		b.avail -= n
		b.mu.Unlock()
		return nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-quit:
		b.mu.Lock()
		select {
		case <-w.ready:
			// Granted while we gave up: hand it back.
			b.mu.Unlock()
			b.release(n)
			return errQuit
		default:
		}
		for i, x := range b.waiters {
			if x == w {
				b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
				break
			}
		}
		b.grantLocked() // the head may have been us, blocking others
		b.mu.Unlock()
		return errQuit
	}
}

// tryAcquire takes n bytes if they are free now and nobody waits before us.
func (b *budget) tryAcquire(n int64) bool {
	if n <= 0 {
		return true
	}
	b.mu.Lock()
	ok := len(b.waiters) == 0 && b.avail >= n
	if ok {
		b.avail -= n
	}
	b.mu.Unlock()
	return ok
}

func (b *budget) release(n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	b.grantLocked()
	b.mu.Unlock()
}

func (b *budget) grantLocked() {
	for len(b.waiters) > 0 && b.avail >= b.waiters[0].n {
		w := b.waiters[0]
		b.waiters = b.waiters[1:]
		b.avail -= w.n
		close(w.ready)
	}
}

// inUse reports the bytes currently held (for tests and metrics).
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.size - b.avail
}

// cost is what a request's buffer pins while it is in flight.
func cost(r proto.Request) int64 {
	switch r.Type {
	case proto.CmdWrite:
		return int64(r.Length) // proto.ParseRequest capped it at proto.MaxRequestSize
	case proto.CmdRead:
		// A READ over the maximum is refused before any buffer is sized.
		if r.Length <= proto.MaxRequestSize {
			return int64(r.Length)
		}
	}
	return 0
}

// clampBudget keeps a budget able to hold the largest request, so waiting
// always ends.
func clampBudget(v, def int64) int64 {
	if v <= 0 {
		v = def
	}
	return max(v, proto.MaxRequestSize)
}
