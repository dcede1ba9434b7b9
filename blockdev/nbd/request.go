package nbd

import (
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// request is one in-flight NBD request. A connection owns a fixed set of
// them, recycled through a free list, so the steady state allocates nothing.
type request struct {
	hdr  proto.Request
	hbuf [proto.RequestHeaderSize]byte
	// page is the request's own buffer, in its connection's buffers
	// (buffers.go): a reply header and one page. A READ of at most a page
	// is decoded into it and goes out from it with its header; a one-page
	// WRITE the reader cannot store at once waits in it for a worker.
	// Nothing larger is ever buffered per request: a larger WRITE is
	// stored page by page as it comes off the socket, through the server's
	// fixed pool of write pages or by the reader itself (reader.go,
	// pool.go), a larger READ is sent a chunk at a time as it is decoded
	// (stream.go), so a burst of large requests costs fixed buffers, not a
	// payload each.
	page []byte
	// out is the reply (header and payload) waiting in the send queue.
	out []byte
	// served: the reader has done the request (a WRITE) and a worker only
	// sends its prepared reply (connections without inline replies).
	served bool
	// A WRITE's pieces the reader handed to a worker (pool.go), the
	// device's first error on the pieces stored so far, and own: the piece
	// of a one-page WRITE in the request's own page.
	pieces, piecesTail *piece
	werr               error
	own                piece
	// start is when its header was read, for ServerOptions.Observe.
	start time.Time
	// next links the requests of one batch handed to a worker.
	next *request
}

// addPiece queues pc for the worker that finishes r.
func (r *request) addPiece(pc *piece) {
	if r.pieces == nil {
		r.pieces = pc
	} else {
		r.piecesTail.next = pc
	}
	r.piecesTail = pc
}

// pageBuffer is a request's buffer: the reply header and one page.
const pageBuffer = proto.ReplyHeaderSize + blockdev.PageSize

// reply returns r's buffer with room for the reply header and n bytes
// (n <= PageSize).
func (r *request) reply(n int) []byte { return r.page[:proto.ReplyHeaderSize+n] }
