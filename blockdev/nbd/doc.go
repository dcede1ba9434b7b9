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
//	reader.go    reads the request header and payload (rxbuffer.go)
//	inline.go    a one-page request that needs no waiting is served by the
//	             reader itself (Target.TryWritePage)...
//	handle.go    ...else a worker runs it (Target.WriteAt) and prepares the reply
//	sender.go    replies go out in one writev, in any order
//	request.go   the request buffers; limits.go the in-flight budget
//	handover.go  stopping at a request boundary to pass the socket on
package nbd
