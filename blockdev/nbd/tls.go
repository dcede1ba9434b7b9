package nbd

// TLS for NBD: NBD_OPT_STARTTLS during the handshake upgrades the socket to
// crypto/tls, as nbd-client, qemu-nbd and libnbd expect. TLS is offered when
// ServerOptions.TLS is set; TLSRequired refuses everything else on TCP.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// LoadTLSConfig builds a server TLS configuration from PEM files. With a CA
// file, clients must present a certificate it signed.
func LoadTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("nbd: tls: a certificate and its key are both needed")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("nbd: tls: load %s and %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("nbd: tls: client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nbd: tls: no PEM certificate in %s", caFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// tlsRequired says whether this connection must start TLS before anything
// else. Unix sockets are exempt: their file mode is their access control,
// and the kernel's nbd-client does not do TLS on them.
func (c *conn) tlsRequired() bool {
	return c.srv.opts.TLSRequired && !c.tls && c.raw.LocalAddr().Network() != "unix"
}

// startTLS answers NBD_OPT_STARTTLS and, when it is accepted, runs the TLS
// handshake and moves the connection onto it.
func (c *conn) startTLS(opt, n uint32) error {
	cfg := c.srv.opts.TLS
	switch {
	case cfg == nil:
		return c.optReply(opt, proto.RepErrUnsup, []byte("TLS is not configured on this server"))
	case c.tls:
		return c.optReply(opt, proto.RepErrInvalid, []byte("TLS is already started"))
	case n != 0:
		return c.optReply(opt, proto.RepErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
	}
	if err := c.optReply(opt, proto.RepAck, nil); err != nil {
		return err
	}
	if c.br.Buffered() > 0 {
		// Plaintext sent before our ACK would be read as if it came over
		// TLS (the STARTTLS injection attack): refuse the connection.
		return errors.New("nbd: client sent data after STARTTLS before the TLS handshake")
	}
	tc := tls.Server(c.raw, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	c.nc, c.br, c.tls = tc, bufio.NewReaderSize(tc, handshakeBuffer), true
	return nil
}
