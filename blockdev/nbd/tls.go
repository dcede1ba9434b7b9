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
	"sync"
	"time"

	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// LoadTLSConfig builds a server TLS configuration from PEM files. With a CA
// file, clients must present a certificate it signed, for client
// authentication (extendedKeyUsage clientAuth, or none).
//
// The server does not name that CA in its certificate request (Go would,
// from ClientCAs): it asks for any certificate and verifies the chain itself
// (verifyClient). gnutls clients (libnbd, qemu, nbd-client) pick their
// certificate from such a request by the CA names and by the key types the
// request's signature_algorithms imply, and for TLS 1.3 Go lists only
// RSA-PSS schemes for RSA, which gnutls reads as keys of type RSA-PSS: an
// ordinary RSA (rsaEncryption) client certificate, as openssl and certtool
// make by default, then matches no request, the client sends none, and the
// handshake fails with a fatal alert. With no CA names gnutls sends the
// client's only certificate, whatever its key type.
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
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyConnection = verifyClient(pool)
	}
	return cfg, nil
}

// verifyClient checks the client's certificate chain against roots, as
// tls.RequireAndVerifyClientCert would with ClientCAs.
func verifyClient(roots *x509.CertPool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tls: client sent no certificate")
		}
		opts := x509.VerifyOptions{
			Roots: roots, Intermediates: x509.NewCertPool(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("tls: client certificate %q: %w", cs.PeerCertificates[0].Subject.String(), err)
		}
		return nil
	}
}

// logLimit lets through at most logBurst lines per logWindow; the next
// line let through says how many were left out.
type logLimit struct {
	mu      sync.Mutex
	start   time.Time // of the current window
	n       int       // lines let through in it
	dropped int       // lines left out since the last one let through
}

const (
	logBurst  = 5
	logWindow = 10 * time.Second
)

// allow says whether to log a line now, and how many were left out before.
func (l *logLimit) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= logWindow {
		l.start, l.n = now, 0
	}
	if l.n >= logBurst {
		l.dropped++
		return false, 0
	}
	l.n++
	dropped := l.dropped
	l.dropped = 0
	return true, dropped
}

// tlsRejected logs a TLS handshake that failed, one line with its reason,
// rate-limited: the client only sees an alert, so this is how an admin
// learns why (a certificate from another CA, an expired one, none at all).
func (c *conn) tlsRejected(err error) {
	ok, dropped := c.srv.tlsRejects.allow(time.Now())
	if !ok {
		return
	}
	attrs := []any{"conn", c.id, "remote", c.raw.RemoteAddr().String(), "reason", err.Error()}
	if dropped > 0 {
		attrs = append(attrs, "not_logged_before", dropped)
	}
	c.srv.log.Warn("TLS handshake rejected", attrs...)
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
		err := errors.New("nbd: client sent data after STARTTLS before the TLS handshake")
		c.tlsRejected(err)
		return err
	}
	tc := tls.Server(c.raw, cfg)
	if err := tc.Handshake(); err != nil {
		c.tlsRejected(err)
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	c.nc, c.br, c.tls = tc, bufio.NewReaderSize(tc, handshakeBuffer), true
	return nil
}
