package tests

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTLSAdminCertificates: client certificates as an admin makes them,
// with openssl's and certtool's defaults (an RSA CA; an RSA or ECDSA client
// key), not Go's, against libnbd (nbdinfo) and qemu-io, both gnutls
// clients. An RSA client certificate used to fail: the server named its CA
// in the certificate request, which makes gnutls match the key type against
// the request's TLS 1.3 signature schemes, RSA-PSS only, so it sent no
// certificate (blockdev/nbd/tls.go). A client of another CA is refused, and
// the server logs why in one line.
func TestTLSAdminCertificates(t *testing.T) {
	need(t, "nbdinfo", "qemu-io", "openssl", "certtool")
	for _, maker := range []string{"openssl", "certtool"} {
		for _, key := range []string{"rsa", "ecdsa"} {
			t.Run(maker+"-"+key, func(t *testing.T) {
				dir := t.TempDir()
				makePKI(t, maker, key, dir)
				port := freePort(t)
				s := startServer(t, "--size", "4M", "--listen", port, "--tls-required",
					"--tls-cert", filepath.Join(dir, "server-cert.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
					"--tls-ca", filepath.Join(dir, "ca-cert.pem"))
				waitTCP(t, s, port)
				out := run(t, "nbdinfo", fmt.Sprintf("nbds://localhost:%s/%s?tls-certificates=%s", port, s.Name, dir))
				if !strings.Contains(out, "export-size: 4194304") {
					t.Errorf("nbdinfo over TLS:\n%s", out)
				}
				out = run(t, "qemu-io", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+dir,
					"--image-opts", fmt.Sprintf("driver=nbd,server.type=inet,server.host=localhost,server.port=%s,export=%s,tls-creds=tls0", port, s.Name),
					"-c", "write -P 0x5a 0 4096", "-c", "read -P 0x5a 0 4096")
				if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
					t.Errorf("qemu-io over TLS:\n%s", out)
				}

				// The same client key and name, signed by another CA.
				other := t.TempDir()
				makePKI(t, maker, key, other)
				for _, f := range []string{"ca-cert.pem"} {
					b, _ := os.ReadFile(filepath.Join(dir, f))
					os.WriteFile(filepath.Join(other, f), b, 0o600)
				}
				if out, err := exec.Command("nbdinfo", fmt.Sprintf("nbds://localhost:%s/%s?tls-certificates=%s", port, s.Name, other)).CombinedOutput(); err == nil {
					t.Fatalf("a client certificate of another CA was accepted:\n%s", out)
				}
				deadline := time.Now().Add(10 * time.Second)
				for !strings.Contains(s.stderr(), "TLS handshake rejected") {
					if time.Now().After(deadline) {
						t.Fatalf("no log line for the rejected handshake:\n%s", s.stderr())
					}
					time.Sleep(20 * time.Millisecond)
				}
				var line string
				for _, l := range strings.Split(s.stderr(), "\n") {
					if strings.Contains(l, "TLS handshake rejected") {
						line = l
					}
				}
				if !strings.Contains(line, "unknown authority") || !strings.Contains(line, "remote=127.0.0.1:") {
					t.Errorf("the rejection's log line lacks the reason or the client: %s", line)
				}
			})
		}
	}
}

// waitTCP waits until the server accepts on 127.0.0.1:port.
func waitTCP(t *testing.T, s *server, port string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port)); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no TCP listener on port %s: %s", port, s.stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// makePKI writes into dir what libnbd and qemu read from a certificate
// directory (ca-cert.pem, client-cert.pem, client-key.pem) and the
// server's pair, made the way an admin following the tool's documentation
// would: an RSA CA; the server's key RSA; the client's key RSA or ECDSA.
func makePKI(t *testing.T, maker, clientKey, dir string) {
	t.Helper()
	sh := func(script string) {
		t.Helper()
		cmd := exec.Command("sh", "-e", "-c", script)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
	}
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	switch maker {
	case "openssl":
		newKey := "-newkey rsa:2048"
		if clientKey == "ecdsa" {
			newKey = "-newkey ec -pkeyopt ec_paramgen_curve:P-256"
		}
		write("server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
		write("client.ext", "extendedKeyUsage=clientAuth\n")
		sh(`openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 30 -subj "/CN=uzram test CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj /CN=localhost 2>/dev/null
openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 30 -extfile server.ext -out server-cert.pem 2>/dev/null
openssl req ` + newKey + ` -nodes -keyout client-key.pem -out client.csr -subj /CN=client 2>/dev/null
openssl x509 -req -in client.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 30 -extfile client.ext -out client-cert.pem 2>/dev/null`)
	case "certtool":
		write("ca.info", "cn = uzram test CA\nca\ncert_signing_key\nexpiration_days = 30\n")
		write("server.info", "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n")
		write("client.info", "cn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n")
		sh(`certtool --generate-privkey --outfile ca-key.pem 2>/dev/null
certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info --outfile ca-cert.pem 2>/dev/null
certtool --generate-privkey --outfile server-key.pem 2>/dev/null
certtool --generate-certificate --load-privkey server-key.pem --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem --template server.info --outfile server-cert.pem 2>/dev/null
certtool --generate-privkey --key-type ` + clientKey + ` --outfile client-key.pem 2>/dev/null
certtool --generate-certificate --load-privkey client-key.pem --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem --template client.info --outfile client-cert.pem 2>/dev/null`)
	}
}
