package nbd

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/swapsafe"
)

// A connection's buffers are one mapping off the Go heap, faulted in when
// transmission starts (a swap server must not fault on them later, and
// under mlockall touching locks them) and unmapped when the connection
// ends, so they go back to the OS at once: Go heap would stay with the
// process after a burst (under mlock, and under the runtime's scavenger for
// minutes). Their size is fixed by the connection's shape, never by what
// the client sends: the receive buffer, a page per request slot, a
// compression scratch page for the reader and each worker, and a few
// chunks for large READs. (Large WRITEs use the server's write pool,
// pool.go.)
//
//	rx        transmitBuffer
//	requests  MaxInflight x (reply header + page)
//	scratch   (1 + Workers) x page (compression output)
//	chunks    min(Workers, streamBuffers) x (reply header + streamChunk)

// streamChunk is how much of a large READ a worker decodes before sending
// it: the kernel's requests (128 KiB at most for nbd) fit in one, so they
// are decoded before the worker takes the socket and several decode at
// once; a larger READ is sent a chunk at a time (stream.go).
const streamChunk = 128 << 10

// streamBuffers bounds a connection's chunks: so many large READs decode at
// once, however many workers a big machine gives it; more wait for one.
const streamBuffers = 4

// connBuffers is a connection's mapping, carved.
type connBuffers struct {
	mem     []byte
	rx      []byte
	pages   [][]byte // one per request slot
	scratch [][]byte // the reader's, then one per worker
	chunks  [][]byte // reply header + streamChunk each
}

func connChunks(workers int) int { return min(workers, streamBuffers) }

func connBufferBytes(inflight, workers int) int {
	return transmitBuffer + inflight*pageBuffer + (1+workers)*blockdev.PageSize +
		connChunks(workers)*(proto.ReplyHeaderSize+streamChunk)
}

// newConnBuffers maps and faults in a connection's buffers.
func newConnBuffers(inflight, workers int) (*connBuffers, error) {
	n := connBufferBytes(inflight, workers)
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("nbd: map %d bytes of connection buffers: %w", n, err)
	}
	// Small pages: a huge page would make RSS jump by 2 MiB per connection.
	_ = unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	swapsafe.Prefault(mem)
	b := &connBuffers{mem: mem}
	take := func(k int) []byte {
		p := mem[:k:k]
		mem = mem[k:]
		return p
	}
	b.rx = take(transmitBuffer)
	b.pages = make([][]byte, inflight)
	for i := range b.pages {
		b.pages[i] = take(pageBuffer)
	}
	b.scratch = make([][]byte, 1+workers)
	for i := range b.scratch {
		b.scratch[i] = take(blockdev.PageSize)
	}
	b.chunks = make([][]byte, connChunks(workers))
	for i := range b.chunks {
		b.chunks[i] = take(proto.ReplyHeaderSize + streamChunk)
	}
	return b, nil
}

// free unmaps the buffers: nothing may use them afterwards.
func (b *connBuffers) free() {
	if b == nil || b.mem == nil {
		return
	}
	_ = unix.Munmap(b.mem)
	b.mem = nil
}
