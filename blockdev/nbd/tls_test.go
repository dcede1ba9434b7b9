package nbd

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"io"
	"log/slog"
	"math/big"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/nbdclient"
	"github.com/uzram/uzram/streams"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testPKI is a CA with a server and a client certificate, made in memory.
type testPKI struct {
	caPool         *x509.CertPool
	server, client tls.Certificate
}

var (
	pkiOnce sync.Once
	pki     testPKI
)

func getPKI(tb testing.TB) testPKI {
	pkiOnce.Do(func() {
		caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		caTmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "uzram test CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		if err != nil {
			panic(err)
		}
		ca, _ := x509.ParseCertificate(caDER)
		pki.caPool = x509.NewCertPool()
		pki.caPool.AddCert(ca)
		leaf := func(serial int64, usage x509.ExtKeyUsage) tls.Certificate {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "localhost"},
				NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
				DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
			if err != nil {
				panic(err)
			}
			return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		}
		pki.server = leaf(2, x509.ExtKeyUsageServerAuth)
		pki.client = leaf(3, x509.ExtKeyUsageClientAuth)
	})
	return pki
}

func fuzzTLS(tb testing.TB) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{getPKI(tb).server}, MinVersion: tls.VersionTLS12}
}

func (p testPKI) clientConfig(withCert bool) *tls.Config {
	cfg := &tls.Config{RootCAs: p.caPool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if withCert {
		cfg.Certificates = []tls.Certificate{p.client}
	}
	return cfg
}

// startTLSServer serves d on TCP loopback and on a unix socket.
func startTLSServer(t *testing.T, d *blockdev.Device, opts ServerOptions) (tcp, unix string) {
	t.Helper()
	opts.Logger = discardLogger()
	srv := NewServer(opts)
	if err := srv.AddExport(d); err != nil {
		t.Fatal(err)
	}
	lt, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unix = filepath.Join(t.TempDir(), "s.sock")
	lu, err := net.Listen("unix", unix)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lt)
	go srv.Serve(lu)
	t.Cleanup(func() { srv.Shutdown(t.Context()) })
	return lt.Addr().String(), unix
}

func tlsDevice(t *testing.T) *blockdev.Device {
	d, err := blockdev.New(blockdev.Config{Name: "tls", Size: 1 << 20, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestStartTLS(t *testing.T) {
	p := getPKI(t)
	d := tlsDevice(t)
	cfg := fuzzTLS(t)
	cfg.ClientCAs, cfg.ClientAuth = p.caPool, tls.RequireAndVerifyClientCert
	addr, _ := startTLSServer(t, d, ServerOptions{TLS: cfg, TLSRequired: true})

	c, err := nbdclient.DialTLS("tcp", addr, "tls", p.clientConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	page := bytes.Repeat([]byte("over tls"), 512)
	if err := c.WriteAt(page, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(page))
	if err := c.ReadAt(got, 4096); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("read over TLS: %v", err)
	}
	// No client certificate: the TLS handshake fails and nothing is served.
	if c2, err := nbdclient.DialTLS("tcp", addr, "tls", p.clientConfig(false)); err == nil {
		// TLS 1.3 reports a refused client certificate on the first read.
		if err := c2.ReadAt(got, 0); err == nil {
			t.Fatal("served a client without a certificate")
		}
	}
	// A certificate from another CA is refused too.
	other := p.clientConfig(true)
	other.RootCAs = x509.NewCertPool()
	if _, err := nbdclient.DialTLS("tcp", addr, "tls", other); err == nil {
		t.Fatal("client accepted a server certificate it cannot verify")
	}
}

// rawOptions opens a plain connection and runs the greeting.
func rawOptions(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(nc, make([]byte, 18)); err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte{0, 0, 0, 3})
	return nc
}

func expectReply(t *testing.T, nc net.Conn, opt uint32, data []byte, want uint32) {
	t.Helper()
	if err := nbdclient.SendOption(nc, opt, data); err != nil {
		t.Fatal(err)
	}
	typ, p, err := nbdclient.ReadOptionReply(nc)
	if err != nil {
		t.Fatalf("option %d: %v", opt, err)
	}
	if typ != want {
		t.Fatalf("option %d: reply %#x (%q), want %#x", opt, typ, p, want)
	}
}

func TestTLSRequired(t *testing.T) {
	d := tlsDevice(t)
	addr, unix := startTLSServer(t, d, ServerOptions{TLS: fuzzTLS(t), TLSRequired: true})
	nc := rawOptions(t, "tcp", addr)
	expectReply(t, nc, proto.OptGo, fzInfoData("tls"), proto.RepErrTLSReqd)
	expectReply(t, nc, proto.OptInfo, fzInfoData("tls"), proto.RepErrTLSReqd)
	expectReply(t, nc, proto.OptList, nil, proto.RepErrTLSReqd)
	expectReply(t, nc, proto.OptStartTLS, []byte{1}, proto.RepErrInvalid)
	expectReply(t, nc, proto.OptAbort, nil, proto.RepAck)

	// EXPORT_NAME has no error reply: the server hangs up.
	nc = rawOptions(t, "tcp", addr)
	nbdclient.SendOption(nc, proto.OptExportName, []byte("tls"))
	if n, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatalf("server answered EXPORT_NAME (%d bytes) without TLS", n)
	}
	if _, err := nbdclient.Dial("tcp", addr, "tls"); err == nil {
		t.Fatal("plain GO succeeded on a TLS-only server")
	}
	// Unix sockets are exempt: their file mode is the access control.
	c, err := nbdclient.Dial("unix", unix, "tls")
	if err != nil {
		t.Fatalf("plain client on the unix socket: %v", err)
	}
	c.Close()
	// After STARTTLS everything works, over TCP and over the unix socket.
	for _, ep := range [][2]string{{"tcp", addr}, {"unix", unix}} {
		c, err := nbdclient.DialTLS(ep[0], ep[1], "tls", getPKI(t).clientConfig(false))
		if err != nil {
			t.Fatalf("%s: %v", ep[0], err)
		}
		if err := c.WriteAt(make([]byte, 512), 0); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

func TestStartTLSNotConfigured(t *testing.T) {
	d := tlsDevice(t)
	addr, _ := startTLSServer(t, d, ServerOptions{})
	nc := rawOptions(t, "tcp", addr)
	expectReply(t, nc, proto.OptStartTLS, nil, proto.RepErrUnsup)
	expectReply(t, nc, proto.OptGo, fzInfoData("tls"), proto.RepInfo) // still negotiating
}

// TestStartTLSInjection: plaintext sent right behind STARTTLS, before the
// server's ACK, must not be taken as if it came over TLS.
func TestStartTLSInjection(t *testing.T) {
	d := tlsDevice(t)
	addr, _ := startTLSServer(t, d, ServerOptions{TLS: fuzzTLS(t), TLSRequired: true})
	nc := rawOptions(t, "tcp", addr)
	b := append(fzOption(proto.OptStartTLS, nil), fzOption(proto.OptGo, fzInfoData("tls"))...)
	nc.Write(b)
	var h [20]byte
	io.ReadFull(nc, h[:]) // the ACK
	if typ := binary.BigEndian.Uint32(h[12:]); typ != proto.RepAck {
		t.Fatalf("STARTTLS reply %#x", typ)
	}
	if _, err := io.ReadFull(nc, make([]byte, 1)); err == nil {
		t.Fatal("server went on after plaintext was injected behind STARTTLS")
	}
}
