package blockdev

// Target is a device as a transport (blockdev/nbd, blockdev/ublk) sees it:
// byte-addressed I/O on whole or partial pages, and the statistics a
// transport feeds. *Device implements it; the transports know nothing else
// of the device, and the device nothing of them.
//
// Every method is safe for concurrent use. Requests on the same page are
// serialised by the device; requests on different pages run in parallel.
type Target interface {
	Name() string
	Size() uint64 // bytes, a whole number of pages

	// ReadAt fills p from byte offset off.
	ReadAt(p []byte, off uint64) error
	// WriteAt stores p at byte offset off. scratch, if not nil, is the
	// calling thread's own buffer of at least PageSize bytes, prefaulted:
	// whole pages are compressed into it, so the compression stream is
	// given back before the write waits for store memory.
	WriteAt(p []byte, off uint64, scratch []byte) error
	// WritePartial is WriteAt that, while memory is short, never waits
	// for store memory: it stores a leading part of p (whole pages) and
	// returns its length, or ErrWouldWait having stored nothing. For a
	// transport whose kernel completes part of a request and sends the rest
	// again, and which can keep a request waiting without a thread (ublk).
	WritePartial(p []byte, off uint64, scratch []byte) (int, error)
	// Discard forgets [off, off+n): a TRIM, or swap freeing its slots.
	Discard(off, n uint64) error
	// WriteZeroes makes [off, off+n) read as zeros; with noHole whole pages
	// stay allocated as zero pages (which cost no store memory either).
	WriteZeroes(off, n uint64, noHole bool) error
	// Flush makes every acknowledged write durable: a no-op for memory.
	Flush() error

	// TryReadPage and TryWritePage do one whole, aligned page only when that
	// needs no waiting (the page is not locked, the store has memory ready
	// for a write); done false means nothing happened and the caller must
	// use ReadAt or WriteAt, from a thread that may block. A transport's
	// reader uses them to serve a request without handing it to a worker.
	TryReadPage(dst []byte, page uint64) (done bool, err error)
	TryWritePage(src []byte, page uint64, scratch []byte) (done bool, err error)

	// CountInvalid records a request the transport refused before it reached
	// the device (zram's io_stat invalid_io).
	CountInvalid()
}

var _ Target = (*Device)(nil)
