package nbdclient

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// DialTLS connects to an NBD server, upgrades the connection with
// NBD_OPT_STARTTLS and opens export over TLS.
func DialTLS(network, addr, export string, cfg *tls.Config) (*Client, error) {
	nc, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	tc, err := StartTLS(nc, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	c, err := handshakeGo(tc, bufio.NewReader(tc), export)
	if err != nil {
		tc.Close()
		return nil, err
	}
	return c, nil
}

// StartTLS reads the greeting, sends the client flags and NBD_OPT_STARTTLS,
// and runs the TLS handshake. The returned connection is still in the
// option phase: send options over it (DialTLS opens an export on it).
func StartTLS(nc net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	// Unbuffered reads: nothing after the ACK may be consumed here, since
	// the TLS handshake reads those bytes.
	var hello [18]byte
	if _, err := io.ReadFull(nc, hello[:]); err != nil {
		return nil, fmt.Errorf("nbd: read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[8:]) != proto.OptMagic {
		return nil, errors.New("nbd: server is not fixed-newstyle")
	}
	if _, err := nc.Write([]byte{0, 0, 0, 3}); err != nil {
		return nil, fmt.Errorf("nbd: send flags: %w", err)
	}
	if err := SendOption(nc, proto.OptStartTLS, nil); err != nil {
		return nil, err
	}
	typ, payload, err := ReadOptionReply(nc)
	if err != nil {
		return nil, err
	}
	if typ != proto.RepAck {
		return nil, fmt.Errorf("nbd: STARTTLS refused: reply %#x: %s", typ, payload)
	}
	tc := tls.Client(nc, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	return tc, nil
}

// handshakeGo sends NBD_OPT_GO and starts the client once it is acknowledged.
func handshakeGo(nc net.Conn, br *bufio.Reader, export string) (*Client, error) {
	data := make([]byte, 4+len(export)+2+2)
	binary.BigEndian.PutUint32(data, uint32(len(export)))
	copy(data[4:], export)
	binary.BigEndian.PutUint16(data[4+len(export):], 1)
	binary.BigEndian.PutUint16(data[6+len(export):], proto.InfoBlockSize)
	if err := SendOption(nc, proto.OptGo, data); err != nil {
		return nil, err
	}
	c := &Client{nc: nc, pend: map[uint64]*pending{}, closed: make(chan struct{})}
	for {
		typ, payload, err := ReadOptionReply(br)
		if err != nil {
			return nil, err
		}
		switch {
		case typ == proto.RepAck:
			go c.readReplies(br)
			return c, nil
		case typ == proto.RepInfo && len(payload) >= 12 && binary.BigEndian.Uint16(payload) == proto.InfoExport:
			c.Export.Size = binary.BigEndian.Uint64(payload[2:])
			c.Export.Flags = binary.BigEndian.Uint16(payload[10:])
		case typ == proto.RepInfo && len(payload) >= 14 && binary.BigEndian.Uint16(payload) == proto.InfoBlockSize:
			c.Export.MinBlock = binary.BigEndian.Uint32(payload[2:])
			c.Export.PrefBlock = binary.BigEndian.Uint32(payload[6:])
			c.Export.MaxBlock = binary.BigEndian.Uint32(payload[10:])
		case typ&(1<<31) != 0:
			return nil, fmt.Errorf("nbd: export %q refused: error reply %#x: %s", export, typ, payload)
		}
	}
}
