// Package blockdev is uzram's block device and its NBD server.
//
// The device keeps one 16-byte slot per 4 KiB page (slot.go); a page is
// either empty, same-filled (every 8-byte word equal: the word is kept in the
// slot and costs no store memory), compressed by a zcomp stream and kept in
// the page store (pagestore), or huge (it did not compress below
// HugeThreshold, so it is stored raw). Requests arrive at 512-byte
// granularity; a sub-page write reads, modifies and rewrites its page under
// that page's lock. Page locks are striped over a fixed lock table, so
// requests on different pages almost never meet, and requests on the same
// page are always serialised.
//
// The NBD server (server.go, handshake.go, transmit.go) is our own rather
// than go-nbd's: go-nbd v0.3.2 serves one request at a time, sends a READ's
// success header before reading the data, drops the connection on any backend
// error and knows no FLUSH, TRIM or WRITE_ZEROES, all of which a swap device
// needs. We keep go-nbd's protocol constants. The transmission phase is one
// reader per connection feeding a bounded set of workers; each reply is
// written whole (header and payload in one write) as soon as its request is
// done, in any order, which is what the Linux nbd driver expects.
package blockdev
