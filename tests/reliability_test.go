package tests

// Reliability end to end, through the real binary: hostile and broken
// clients, a client killed mid-pipeline, connection churn, restarts with a
// state file (and corrupt ones), read-only exports, socket permissions, TLS.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/nbdclient"
)

// intact checks that a page written earlier reads back through an existing
// connection and through a new one.
func intact(t *testing.T, s *server, old *nbdclient.Client, off uint64, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if err := old.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("existing connection: data at %d lost or connection hurt: %v", off, err)
	}
	fresh := dial(t, s)
	clear(got)
	if err := fresh.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("new connection: data at %d: %v", off, err)
	}
	fresh.Close()
}

// rawConn negotiates on a plain socket and returns it for raw requests.
func rawConn(t *testing.T, s *server) net.Conn {
	t.Helper()
	nc, err := net.Dial("unix", s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	readFull(nc, make([]byte, 18))
	nc.Write([]byte{0, 0, 0, 3})
	if err := nbdclient.SendOption(nc, 7, infoReq(s.Name)); err != nil {
		t.Fatal(err)
	}
	for {
		typ, _, err := nbdclient.ReadOptionReply(nc)
		if err != nil {
			t.Fatal(err)
		}
		if typ == 1 {
			return nc
		}
		if typ&(1<<31) != 0 {
			t.Fatalf("GO refused: %#x", typ)
		}
	}
}

func request(flags, typ uint16, handle, off uint64, n uint32) []byte {
	b := rawHeader(proto.RequestMagic, typ, off, n)
	b[4], b[5] = byte(flags>>8), byte(flags)
	for i := 0; i < 8; i++ {
		b[8+i] = byte(handle >> (56 - 8*i))
	}
	return b
}

// TestHostileClients: each misbehaving client is followed by a check that
// other connections, every stored byte and new connections are fine.
func TestHostileClients(t *testing.T) {
	s := startServer(t, "--size", "16M")
	good := dial(t, s)
	keep := bytes.Repeat([]byte("do not lose me!\n"), 256)
	for _, off := range []uint64{0, 4096, 1 << 20} {
		if err := good.WriteAt(keep, off); err != nil {
			t.Fatal(err)
		}
	}
	check := func() {
		t.Helper()
		for _, off := range []uint64{0, 4096, 1 << 20} {
			intact(t, s, good, off, keep)
		}
	}

	t.Run("disconnect mid WRITE payload", func(t *testing.T) {
		// A WRITE is stored page by page as it arrives: pages received in
		// full may be stored, the page cut short never is, and nothing
		// outside the write changes.
		const at = 2 << 20
		old := bytes.Repeat([]byte("old page, whole\n"), 16<<10/16)
		if err := good.WriteAt(old, at); err != nil {
			t.Fatal(err)
		}
		nc := rawConn(t, s)
		nc.Write(request(0, proto.CmdWrite, 1, at, 16<<10))
		nc.Write(make([]byte, 10000)) // zeros over "old": two pages and part of a third, cut short
		nc.Close()
		check()
		got := make([]byte, len(old))
		deadline := time.Now().Add(10 * time.Second)
		for {
			if err := good.ReadAt(got, at); err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(got[:8192], make([]byte, 8192)) || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond) // the server may still be storing them
		}
		for p := 0; p < 4; p++ {
			page, was := got[p*4096:(p+1)*4096], old[p*4096:(p+1)*4096]
			zero := bytes.Equal(page, make([]byte, 4096))
			if !bytes.Equal(page, was) && (p >= 2 || !zero) {
				t.Fatalf("page %d of the cut-short write is neither old nor whole", p)
			}
		}
	})
	t.Run("header then stall", func(t *testing.T) {
		stalled := rawConn(t, s)
		stalled.Write(request(0, proto.CmdWrite, 1, 0, 1<<20)[:20])
		stalled2 := rawConn(t, s)
		stalled2.Write(request(0, proto.CmdWrite, 1, 8<<20, 1<<20)) // away from "keep": its first page is stored
		stalled2.Write(make([]byte, 4096))
		// Others are served at once while these two hang mid-request.
		start := time.Now()
		for i := 0; i < 100; i++ {
			if err := good.WriteAt(keep, 2<<20); err != nil {
				t.Fatal(err)
			}
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Fatalf("100 writes took %v beside stalled clients", el)
		}
		check()
	})
	t.Run("every bad field", func(t *testing.T) {
		nc := rawConn(t, s)
		bad := []struct {
			name     string
			req      []byte
			payload  int
			wantCode uint32
		}{
			{"unknown type", request(0, 77, 10, 0, 4096), 0, 22},
			{"CACHE not advertised", request(0, 5, 11, 0, 4096), 0, 22},
			{"BLOCK_STATUS not negotiated", request(0, 7, 12, 0, 4096), 0, 22},
			{"unknown flag on READ", request(1<<7, proto.CmdRead, 13, 0, 4096), 0, 22},
			{"NO_HOLE on WRITE", request(proto.CmdFlagNoHole, proto.CmdWrite, 14, 0, 512), 512, 22},
			{"DF flag (no structured replies)", request(1<<2, proto.CmdRead, 15, 0, 512), 0, 22},
			{"READ past the end", request(0, proto.CmdRead, 16, 16<<20, 512), 0, 22},
			{"WRITE straddling the end", request(0, proto.CmdWrite, 17, 16<<20-512, 1024), 1024, 22},
			{"offset overflow", request(0, proto.CmdWrite, 18, ^uint64(0)-511, 1024), 1024, 22},
			{"TRIM overflow", request(0, proto.CmdTrim, 19, 1<<63, 1<<31), 0, 22},
			{"WRITE_ZEROES past the end", request(0, proto.CmdWriteZeroes, 20, 0, 32<<20), 0, 22},
			{"READ over 32 MiB", request(0, proto.CmdRead, 21, 0, 32<<20+1), 0, 22},
			{"FLUSH with offset", request(0, proto.CmdFlush, 22, 4096, 0), 0, 22},
			{"zero-length READ", request(0, proto.CmdRead, 23, 0, 0), 0, 0},
		}
		for _, b := range bad {
			nc.Write(append(b.req, make([]byte, b.payload)...))
			var h [16]byte
			if _, err := readFull(nc, h[:]); err != nil {
				t.Fatalf("%s: no reply: %v", b.name, err)
			}
			code := uint32(h[4])<<24 | uint32(h[5])<<16 | uint32(h[6])<<8 | uint32(h[7])
			handle := bytes.Clone(h[8:16])
			if code != b.wantCode || !bytes.Equal(handle, b.req[8:16]) {
				t.Fatalf("%s: reply code %d handle %x, want code %d handle %x", b.name, code, handle, b.wantCode, b.req[8:16])
			}
		}
		check()
		// Fields that put the stream out of sync end only that connection.
		for _, hdr := range [][]byte{
			rawHeader(0x25609514, proto.CmdRead, 0, 512),             // magic
			rawHeader(proto.RequestMagic, proto.CmdWrite, 0, 33<<20), // WRITE length
		} {
			nc := rawConn(t, s)
			nc.Write(hdr)
			if _, err := readFull(nc, make([]byte, 1)); err == nil {
				t.Fatalf("header %x: server went on", hdr)
			}
		}
		check()
	})
	t.Run("1000 connections", func(t *testing.T) {
		pid := s.cmd.Process.Pid
		fds := func() int {
			ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if err != nil {
				t.Skip(err)
			}
			return len(ents)
		}
		base := fds()
		for i := 0; i < 1000; i++ {
			nc, err := net.Dial("unix", s.Socket)
			if err != nil {
				t.Fatal(err)
			}
			switch i % 3 {
			case 1:
				readFull(nc, make([]byte, 18))
			case 2:
				readFull(nc, make([]byte, 18))
				nc.Write([]byte{0, 0, 0, 3, 'I', 'H', 'A'})
			}
			nc.Close()
		}
		deadline := time.Now().Add(20 * time.Second)
		for fds() > base {
			if time.Now().After(deadline) {
				t.Fatalf("server holds %d fds after 1000 closed connections, %d before", fds(), base)
			}
			time.Sleep(20 * time.Millisecond)
		}
		check()
	})
}

// writerBlock is nbdwriter's Block (testdata/nbdwriter).
func writerBlock(i int) []byte {
	b := make([]byte, 8192)
	for j := range b {
		b[j] = byte(i*131+j/7) ^ byte(j>>9) ^ byte(i>>8)
	}
	return b
}

// TestKilledPipelinedWriter: a client process writing with 64 requests in
// flight is killed with SIGKILL. Every write it saw acknowledged is stored;
// every page it may have had in flight holds either its old or its new
// contents, never a mix; data of others is intact; the server goes on.
func TestKilledPipelinedWriter(t *testing.T) {
	dir := t.TempDir()
	writer := filepath.Join(dir, "nbdwriter")
	if out, err := exec.Command("go", "build", "-o", writer, "./testdata/nbdwriter").CombinedOutput(); err != nil {
		t.Fatalf("build nbdwriter: %v\n%s", err, out)
	}
	s := startServer(t, "--size", "64M")
	other := dial(t, s)
	keep := bytes.Repeat([]byte{0xfe, 0xed}, 4096)
	if err := other.WriteAt(keep, 60<<20); err != nil {
		t.Fatal(err)
	}
	const blocks = 7000 // 56 MiB: more than it writes before the kill
	ackFile := filepath.Join(dir, "acks")
	cmd := exec.Command(writer, s.Socket, s.Name, ackFile, strconv.Itoa(blocks))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(ackFile)
		if bytes.Count(b, []byte("\n")) >= 800 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("writer acknowledged only %d blocks in 30s", bytes.Count(b, []byte("\n")))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	b, _ := os.ReadFile(ackFile)
	acked := map[int]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		i, err := strconv.Atoi(line)
		if err != nil {
			t.Fatalf("ack file line %q", line)
		}
		acked[i] = true
	}
	got := make([]byte, 8192)
	zero := make([]byte, 4096)
	mixed := 0
	for i := 0; i < blocks; i++ {
		if err := other.ReadAt(got, uint64(i)*8192); err != nil {
			t.Fatal(err)
		}
		want := writerBlock(i)
		if acked[i] {
			if !bytes.Equal(got, want) {
				t.Fatalf("acknowledged block %d lost", i)
			}
			continue
		}
		for p := 0; p < 2; p++ { // unacknowledged: each page old or new, whole
			pg := got[p*4096 : (p+1)*4096]
			if !bytes.Equal(pg, zero) && !bytes.Equal(pg, want[p*4096:(p+1)*4096]) {
				t.Fatalf("unacknowledged block %d page %d is neither old nor new", i, p)
			}
		}
		if !bytes.Equal(got[:4096], got[4096:]) && bytes.Equal(got[:4096], zero) != bytes.Equal(got[4096:], zero) {
			mixed++
		}
	}
	t.Logf("%d blocks acknowledged before SIGKILL; %d unacknowledged blocks half written (allowed)", len(acked), mixed)
	intact(t, s, other, 60<<20, keep)
}

// TestRestartWithStateFile: fio writes with verification, the daemon stops
// with SIGTERM and saves its state, a new daemon restores it, and fio's
// verify-only pass finds every block.
func TestRestartWithStateFile(t *testing.T) {
	need(t, "fio")
	stateFile := filepath.Join(t.TempDir(), "uzram0.state")
	job := []string{"--rw=randwrite", "--bs=4k", "--size=48M", "--iodepth=32", "--buffer_compress_percentage=50",
		"--refill_buffers", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--randrepeat=1"}
	s := startServer(t, "--size", "64M", "--state-file", stateFile)
	fio(t, s, job...)
	mmBefore, _ := s.stats(t)
	c := dial(t, s)
	tail := bytes.Repeat([]byte("end of device..."), 256)
	if err := c.WriteAt(tail, 64<<20-4096); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.stderr(), "saved device contents") {
		t.Fatalf("no save logged:\n%s", s.stderr())
	}

	s2 := startServer(t, "--size", "64M", "--state-file", stateFile, "--algorithm", "zstd")
	if !strings.Contains(s2.stderr(), "restored device contents") {
		t.Fatalf("no restore logged:\n%s", s2.stderr())
	}
	fio(t, s2, append(job, "--verify_only")...)
	c2 := dial(t, s2)
	got := make([]byte, len(tail))
	if err := c2.ReadAt(got, 64<<20-4096); err != nil || !bytes.Equal(got, tail) {
		t.Fatalf("last page after restart: %v", err)
	}
	mmAfter, _ := s2.stats(t)
	if mmAfter[0] != mmBefore[0]+4096 || mmAfter[1] < mmBefore[1] {
		t.Fatalf("mm_stat before %v, after restart %v", mmBefore, mmAfter)
	}
	if _, err := os.Stat(stateFile + ".loaded"); err != nil {
		t.Fatalf("loaded state file not retired: %v", err)
	}
}

// serveFails runs `uzram serve` expecting it to refuse to start.
func serveFails(t *testing.T, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "x.sock")
	cmd := exec.Command(uzramBin, append([]string{"serve", "--socket", sock, "--no-mlock"}, args...)...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("uzram %v kept running: %s", args, out)
	}
	if err == nil {
		t.Fatalf("uzram %v started: %s", args, out)
	}
	return string(out)
}

// TestCorruptStateRefused: a truncated or altered state file, or one for
// another device, stops the daemon from starting, with the reason, and the
// file is left for the admin.
func TestCorruptStateRefused(t *testing.T) {
	stateFile := filepath.Join(t.TempDir(), "s.state")
	s := startServer(t, "--size", "8M", "--state-file", stateFile)
	c := dial(t, s)
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i/4096) ^ byte(i%251)
	}
	if err := c.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.stop()
	good, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"truncated", good[:len(good)*2/3], "truncated"},
		{"no end record", good[:len(good)-25], "corrupt"},
		{"byte flipped", func() []byte { b := bytes.Clone(good); b[len(b)/2] ^= 0x40; return b }(), "corrupt"},
		{"header flipped", func() []byte { b := bytes.Clone(good); b[20] ^= 1; return b }(), "corrupt"},
		{"empty", nil, "corrupt"},
	} {
		os.WriteFile(stateFile, tc.b, 0o600)
		out := serveFails(t, "--size", "8M", "--state-file", stateFile)
		if !strings.Contains(out, tc.want) || !strings.Contains(out, stateFile) {
			t.Errorf("%s: want an error naming the file and %q, got:\n%s", tc.name, tc.want, out)
		}
		if _, err := os.Stat(stateFile); err != nil {
			t.Errorf("%s: the refused file was removed", tc.name)
		}
	}
	os.WriteFile(stateFile, good, 0o600)
	out := serveFails(t, "--size", "16M", "--state-file", stateFile)
	if !strings.Contains(out, "bytes") {
		t.Errorf("wrong size: %s", out)
	}
	// The intact file still restores everything.
	s2 := startServer(t, "--size", "8M", "--state-file", stateFile)
	c2 := dial(t, s2)
	got := make([]byte, len(data))
	if err := c2.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restore after the refusals: %v", err)
	}
}

func TestReadOnlyExport(t *testing.T) {
	s := startServer(t, "--size", "4M", "--read-only")
	c := dial(t, s)
	if c.Export.Flags&2 == 0 {
		t.Fatalf("READ_ONLY not advertised: flags %#x", c.Export.Flags)
	}
	buf := make([]byte, 4096)
	for name, err := range map[string]error{
		"write":        c.WriteAt(buf, 0),
		"trim":         c.Trim(0, 4096),
		"write zeroes": c.WriteZeroes(0, 4096, false),
	} {
		if nbdclient.Code(err) != 1 {
			t.Errorf("%s on a read-only export: %v, want EPERM", name, err)
		}
	}
	if err := c.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		out := run(t, "nbdinfo", s.uri())
		if !strings.Contains(out, "is_read_only: true") {
			t.Errorf("nbdinfo does not see a read-only export:\n%s", out)
		}
	}
}

func TestSocketMode(t *testing.T) {
	s := startServer(t, "--size", "1M")
	if fi, err := os.Stat(s.Socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("default socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	gid := strconv.Itoa(os.Getgid())
	s2 := startServer(t, "--size", "1M", "--socket-mode", "0660", "--socket-group", gid)
	fi, err := os.Stat(s2.Socket)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v (%v), want 0660", fi.Mode().Perm(), err)
	}
	if st := fi.Sys().(*syscall.Stat_t); strconv.Itoa(int(st.Gid)) != gid {
		t.Fatalf("socket group %d, want %s", st.Gid, gid)
	}
	for _, bad := range []string{"0606x", "0177", "1777"} {
		serveFails(t, "--size", "1M", "--socket-mode", bad)
	}
}

// writePKI writes a CA, a server certificate for 127.0.0.1/localhost and a
// client certificate, under the names libnbd and qemu look for.
func writePKI(t *testing.T, dir string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "uzram test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca-cert.pem", "CERTIFICATE", caDER)
	for i, who := range []string{"server", "client"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		usage := x509.ExtKeyUsageServerAuth
		if who == "client" {
			usage = x509.ExtKeyUsageClientAuth
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(2 + i)), Subject: pkix.Name{CommonName: "localhost"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		write(who+"-cert.pem", "CERTIFICATE", der)
		write(who+"-key.pem", "PRIVATE KEY", kder)
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// TestTLSRequiredEndToEnd: TCP with --tls-required and client
// certificates; Go, libnbd (nbdinfo) and qemu-io clients; plain TCP refused;
// a bare --listen port binds loopback only.
func TestTLSRequiredEndToEnd(t *testing.T) {
	pki := t.TempDir()
	writePKI(t, pki)
	port := freePort(t)
	s := startServer(t, "--size", "4M", "--listen", port,
		"--tls-cert", filepath.Join(pki, "server-cert.pem"), "--tls-key", filepath.Join(pki, "server-key.pem"),
		"--tls-ca", filepath.Join(pki, "ca-cert.pem"), "--tls-required")
	addr := net.JoinHostPort("127.0.0.1", port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no TCP listener on %s: %s", addr, s.stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(s.stderr(), "0.0.0.0") || strings.Contains(s.stderr(), "[::]") {
		t.Fatalf("a bare port listened beyond loopback:\n%s", s.stderr())
	}
	caPEM, _ := os.ReadFile(filepath.Join(pki, "ca-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "client-cert.pem"), filepath.Join(pki, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}}
	c, err := nbdclient.DialTLS("tcp", addr, s.Name, cfg)
	if err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte("tls page"), 512)
	if err := c.WriteAt(page, 0); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := nbdclient.Dial("tcp", addr, s.Name); err == nil {
		t.Fatal("plain TCP client served despite --tls-required")
	}
	// The unix socket stays plain: its mode is its access control.
	intact(t, s, dial(t, s), 0, page)

	if _, err := exec.LookPath("nbdinfo"); err == nil {
		uri := fmt.Sprintf("nbds://127.0.0.1:%s/%s?tls-certificates=%s", port, s.Name, pki)
		out := run(t, "nbdinfo", uri)
		if !strings.Contains(out, "export-size: 4194304") || !strings.Contains(strings.ToLower(out), "tls") {
			t.Errorf("nbdinfo over TLS:\n%s", out)
		}
		if out, err := exec.Command("nbdinfo", fmt.Sprintf("nbd://127.0.0.1:%s/%s", port, s.Name)).CombinedOutput(); err == nil {
			t.Errorf("nbdinfo without TLS succeeded:\n%s", out)
		}
	}
	if _, err := exec.LookPath("qemu-io"); err == nil {
		out := run(t, "qemu-io", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+pki,
			"--image-opts", fmt.Sprintf("driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=%s,export=%s,tls-creds=tls0", port, s.Name),
			"-c", "read -P 0x74 0 1", "-c", "write -P 0x33 4096 4096", "-c", "read -P 0x33 4096 4096")
		if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
			t.Fatalf("qemu-io over TLS:\n%s", out)
		}
	}
}
