// Package nbd serves blockdev targets over the NBD protocol: the
// fixed-newstyle handshake (with STARTTLS, INFO, GO and LIST) and the
// transmission phase, on unix sockets and TCP, as the Linux nbd driver
// (nbd-client), qemu and libnbd speak it.
//
// The server is our own rather than go-nbd's: go-nbd v0.3.2 serves one
// request at a time, sends a READ's success header before reading the data,
// drops the connection on any backend error and knows no FLUSH, TRIM or
// WRITE_ZEROES, all of which a swap device needs. The wire constants are
// shared with uzram's client in package proto.
//
// One WRITE, socket to store, by file:
//
//	server.go    accepts the connection; handshake.go negotiates the export
//	conn.go      starts the transmission phase: buffers, workers, watchdog
//	reader.go    reads the request header (rxbuffer.go), then the payload a
//	             page at a time: a one-page WRITE is stored at once when it
//	             needs no waiting (Target.TryWritePage), a larger one's
//	             pages go to the write pool (pool.go) for a worker
//	handle.go    ...workers store them (Target.WriteAt), run the other
//	             requests and prepare replies; inline.go the reader's own
//	stream.go    a READ of more than a page is sent as it is decoded
//	sender.go    replies go out in one writev, in any order
//	buffers.go   a connection's buffers: one mapping, fixed in size
//	request.go   a request and its page; limits.go timeouts
//	handover.go  stopping at a request boundary to pass the socket on
//
// # Memory
//
// No request has a buffer the size of its payload: whatever clients send
// (nbdcopy's 64 requests of 256 KiB on each of 4 connections, fio's 1 MiB
// writes at QD128, the kernel's 128 KiB swap writeback), the server uses
// fixed buffers off the Go heap. A connection's (buffers.go: about 1.3 MiB
// with the default 128 requests and 4 workers) are mapped when
// transmission starts and unmapped when it ends; the write pool (pool.go: 1
// MiB) is shared by all connections, and when it is full the reader stores
// pages itself from its receive buffer instead of waiting for room. So
// nothing a burst touches stays with the process. A WRITE whose client
// disconnects mid-payload may have stored the pages it sent in full; a page
// is never torn.
package nbd
