package nbd

import (
	"errors"
	"time"
)

// Limits that keep one client (or many) from holding the daemon's
// resources: how long a half-sent request or an unread reply may hold a
// connection, and how long a handshake may take. Memory needs no limit of
// its own: what a connection's requests can pin is its fixed buffers
// (buffers.go), whatever the client sends.
const (
	// DefaultStallTimeout is how long a request may stay half received
	// (header started, payload not complete, no bytes arriving) or a reply
	// half sent before the connection is dropped. An idle connection
	// (nothing started) is never timed out: the kernel keeps swap
	// connections idle for hours.
	DefaultStallTimeout = 60 * time.Second
	// DefaultHandshakeTimeout bounds the whole negotiation, so clients that
	// connect and say nothing do not pile up.
	DefaultHandshakeTimeout = 30 * time.Second
)

// errQuit means the connection ended while its reader waited.
var errQuit = errors.New("nbd: connection closing")
