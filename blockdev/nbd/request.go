package nbd

import (
	"math/bits"
	"sync"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/swapsafe"
)

// request is one in-flight NBD request. A connection owns a fixed set of
// them, recycled through a free list, so the steady state allocates nothing.
type request struct {
	hdr  proto.Request
	hbuf [proto.RequestHeaderSize]byte
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

const smallBuffer = proto.ReplyHeaderSize + blockdev.PageSize

// bigPools hold buffers of 2^i bytes for requests larger than a page. A
// sync.Pool gives memory back to the GC when it sits unused.
var bigPools [27]sync.Pool

// grow returns r's buffer with room for the reply header and n bytes.
func (r *request) grow(n int) []byte {
	need := proto.ReplyHeaderSize + n
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
// server must not take (docs/guest.md). So every connection keeps
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
	l := &bigList{size: proto.ReplyHeaderSize + ownBigRequest, bufs: make([]*[]byte, 0, n)}
	for i := 0; i < n; i++ {
		b := make([]byte, l.size)
		swapsafe.Prefault(b)
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
