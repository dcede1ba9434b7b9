package nbd

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/swapsafe"
)

// The server's write pages: a fixed pool of page buffers, off the Go heap
// and faulted in once, shared by every connection. A WRITE of more than a
// page has its payload copied into them as it comes off the socket and
// handed to a worker, so the reader goes on reading (the kernel's swap-in
// READs must not wait behind a 128 KiB writeback being compressed) and
// several CPUs compress. When the pool is empty the reader stores the rest
// itself, straight from its receive buffer: the pool bounds what WRITEs
// in flight hold, whatever clients send, and never makes anyone wait.

// writePoolPages is the pool's size: 1 MiB, eight of the kernel's 128 KiB
// writebacks, enough to keep every CPU of a small machine compressing.
const writePoolPages = 256

// piece is part of a WRITE waiting for a worker: up to a page of payload
// for one page of the device.
type piece struct {
	buf    []byte // a pool page, or the request's own page
	n      int    // payload bytes in buf
	off    uint64 // device offset
	pooled bool   // buf goes back to the pool
	next   *piece
}

// pagePool is a stack of free pool pages.
type pagePool struct {
	mu   sync.Mutex
	free []*piece
	mem  []byte
}

func newPagePool(n int) (*pagePool, error) {
	mem, err := unix.Mmap(-1, 0, n*blockdev.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("nbd: map the write pool: %w", err)
	}
	_ = unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	swapsafe.Prefault(mem)
	p := &pagePool{mem: mem, free: make([]*piece, n)}
	for i := range p.free {
		p.free[i] = &piece{buf: mem[i*blockdev.PageSize : (i+1)*blockdev.PageSize : (i+1)*blockdev.PageSize], pooled: true}
	}
	return p, nil
}

// get takes a page, or returns nil when none is free.
func (p *pagePool) get() *piece {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.free)
	if n == 0 {
		return nil
	}
	pc := p.free[n-1]
	p.free = p.free[:n-1]
	return pc
}

// put gives a page back.
func (p *pagePool) put(pc *piece) {
	pc.next = nil
	p.mu.Lock()
	p.free = append(p.free, pc) // cap is the pool's size: never grows
	p.mu.Unlock()
}

// pool returns the server's write pool, mapping it on first use.
func (s *Server) pool() (*pagePool, error) {
	s.poolOnce.Do(func() { s.writePool, s.poolErr = newPagePool(writePoolPages) })
	return s.writePool, s.poolErr
}
