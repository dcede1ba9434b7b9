package tests

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/nbdclient"
)

func dial(t testing.TB, s *server) *nbdclient.Client {
	t.Helper()
	c, err := nbdclient.Dial("unix", s.Socket, s.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fio runs fio's nbd engine against the server with verify, and fails the
// test on any error or verify mismatch.
func fio(t *testing.T, s *server, args ...string) string {
	t.Helper()
	need(t, "fio")
	base := []string{"--name=uzram", "--ioengine=nbd", "--uri=" + s.uri(), "--output-format=normal", "--verify_state_save=0"}
	out, err := exec.Command("fio", append(base, args...)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "verify:") && strings.Contains(string(out), "bad") {
		t.Fatalf("fio %v: %v\n%s", args, err, out)
	}
	if !strings.Contains(string(out), "err= 0") {
		t.Fatalf("fio reported errors:\n%s", out)
	}
	return string(out)
}

func TestFioVerifyRandom4k(t *testing.T) {
	s := startServer(t, "--size", "128M")
	fio(t, s, "--rw=randwrite", "--bs=4k", "--size=64M", "--iodepth=32",
		"--buffer_compress_percentage=50", "--refill_buffers", "--verify=crc32c", "--verify_fatal=1")
	mm, _ := s.stats(t)
	if mm[0] == 0 || mm[1] == 0 || mm[1] >= mm[0] {
		t.Fatalf("after 64M of half-compressible data mm_stat is %v: want 0 < compr_data_size < orig_data_size", mm)
	}
}

func TestFioVerifyMixedSizes(t *testing.T) {
	s := startServer(t, "--size", "64M", "--algorithm", "zstd")
	fio(t, s, "--rw=randwrite", "--bsrange=512-128k", "--size=24M", "--iodepth=16", "--numjobs=1",
		"--buffer_compress_percentage=50", "--refill_buffers", "--verify=crc32c", "--verify_fatal=1")
	fio(t, s, "--rw=write", "--bsrange=512-128k", "--size=16M", "--offset=32M", "--iodepth=8",
		"--verify=crc32c", "--verify_fatal=1")
}

func TestNbdinfo(t *testing.T) {
	need(t, "nbdinfo")
	s := startServer(t, "--size", "10M")
	out := run(t, "nbdinfo", s.uri())
	for _, want := range []string{
		"export-size: 10485760", "can_flush: true", "can_fua: true", "can_trim: true",
		"can_zero: true", "can_multi_conn: true", "block_size_minimum: 512",
		"block_size_preferred: 4096", "block_size_maximum: 33554432",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nbdinfo output lacks %q:\n%s", want, out)
		}
	}
	list := run(t, "nbdinfo", "--list", "nbd+unix://?socket="+s.Socket)
	if !strings.Contains(list, "export=\"uzram0\"") {
		t.Errorf("nbdinfo --list does not show uzram0:\n%s", list)
	}
}

// TestQemuIO drives TRIM, WRITE_ZEROES and sub-page writes with qemu-io's
// pattern checks.
func TestQemuIO(t *testing.T) {
	need(t, "qemu-io")
	s := startServer(t, "--size", "16M", "--name", "qtest")
	cmds := []string{
		"write -P 0xab 0 1M", "read -P 0xab 0 1M",
		"discard 64k 128k", "read -P 0 64k 128k", "read -P 0xab 0 64k", "read -P 0xab 192k 64k",
		"write -z 256k 64k", "read -P 0 256k 64k",
		"write -P 0xcd 512 1536", "read -P 0xab 0 512", "read -P 0xcd 512 1536", "read -P 0xab 2048 2048",
		"discard 4608 512", "read -P 0 4608 512", "read -P 0xab 5120 3072",
		"flush", "write -P 0x11 16773120 4096", "read -P 0x11 16773120 4096",
	}
	args := []string{"--image-opts", "driver=nbd,server.type=unix,server.path=" + s.Socket + ",export=qtest"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", args...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	if n := strings.Count(out, "read "); n < 10 {
		t.Fatalf("qemu-io ran %d reads, want 10:\n%s", n, out)
	}
}

// TestTrimZeroesAndSubpage checks discard semantics through the socket,
// including what the store gives back (mm_stat, not RSS).
func TestTrimZeroesAndSubpage(t *testing.T) {
	s := startServer(t, "--size", "32M")
	c := dial(t, s)
	data := make([]byte, 8<<20)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range data {
		data[i] = byte(r.IntN(16)) // compressible, not same-filled
	}
	if err := c.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	mm, _ := s.stats(t)
	if mm[0] != 8<<20 || mm[2] == 0 {
		t.Fatalf("after 8M write: mm_stat %v", mm)
	}
	// Sub-page write in the middle of a page.
	if err := c.WriteAt(bytes.Repeat([]byte{0xee}, 1024), 4096+512); err != nil {
		t.Fatal(err)
	}
	copy(data[4096+512:], bytes.Repeat([]byte{0xee}, 1024))
	// WRITE_ZEROES with and without NO_HOLE, TRIM with unaligned ends.
	if err := c.WriteZeroes(1<<20, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(3<<20, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(5<<20+512, 1<<20); err != nil {
		t.Fatal(err)
	}
	clear(data[1<<20 : 2<<20])
	clear(data[3<<20 : 4<<20])
	clear(data[5<<20+512 : 6<<20+512])
	got := make([]byte, len(data))
	if err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data after trims and zeroes differs")
	}
	_, io := s.stats(t)
	if io[3] < 3*256-2 {
		t.Fatalf("notify_free %d, want about 768 pages freed", io[3])
	}
	if err := c.Trim(0, 32<<20); err != nil {
		t.Fatal(err)
	}
	mm, _ = s.stats(t)
	if mm[0] != 0 || mm[1] != 0 {
		t.Fatalf("after trimming everything mm_stat is %v, want orig and compr 0", mm)
	}
}

// TestErrorReplies: bad requests get error replies and the connection (and
// the data on it) survives.
func TestErrorReplies(t *testing.T) {
	s := startServer(t, "--size", "1M")
	c := dial(t, s)
	page := bytes.Repeat([]byte("keep me "), 512)
	if err := c.WriteAt(page, 0); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name       string
		typ, flags uint16
		off        uint64
		length     uint32
		buf        []byte
		want       uint32
	}{
		{"read past end", proto.CmdRead, 0, 1 << 20, 512, make([]byte, 512), 22},
		{"write past end", proto.CmdWrite, 0, 1<<20 - 256, 512, make([]byte, 512), 22},
		{"overflowing offset", proto.CmdRead, 0, ^uint64(0) - 100, 4096, make([]byte, 4096), 22},
		{"trim past end", proto.CmdTrim, 0, 0, 2 << 20, nil, 22},
		{"unknown command", 42, 0, 0, 4096, nil, 22},
		{"cache (not advertised)", 5, 0, 0, 4096, nil, 22},
		{"unknown flag", proto.CmdRead, 1 << 12, 0, 512, make([]byte, 512), 22},
		{"flush with length", proto.CmdFlush, 0, 0, 10, nil, 22},
	}
	for _, b := range bad {
		err := c.Do(b.typ, b.flags, b.off, b.length, b.buf)
		if got := nbdclient.Code(err); got != b.want {
			t.Errorf("%s: got %v (code %d), want code %d", b.name, err, got, b.want)
		}
	}
	got := make([]byte, len(page))
	if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("data or connection lost after error replies: %v", err)
	}
	_, io := s.stats(t)
	if io[2] < int64(len(bad)) {
		t.Errorf("invalid_io %d, want at least %d", io[2], len(bad))
	}
}

// TestBrokenStreamClosesOnlyThatConnection: a bad magic or an oversized
// WRITE ends one connection; the others and the data are untouched.
func TestBrokenStreamClosesOnlyThatConnection(t *testing.T) {
	s := startServer(t, "--size", "1M")
	good := dial(t, s)
	page := bytes.Repeat([]byte{7, 1}, 2048)
	if err := good.WriteAt(page, 8192); err != nil {
		t.Fatal(err)
	}
	for _, hdr := range [][]byte{
		rawHeader(0xdeadbeef, proto.CmdRead, 0, 512),
		rawHeader(proto.RequestMagic, proto.CmdWrite, 0, 64<<20),
	} {
		bad := dial(t, s)
		if err := bad.SendRaw(hdr); err != nil {
			t.Fatal(err)
		}
		select {
		case <-bad.Closed():
		case <-time.After(10 * time.Second):
			t.Fatal("server kept a connection whose stream is broken")
		}
	}
	got := make([]byte, len(page))
	if err := good.ReadAt(got, 8192); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("other connection or its data hurt: %v", err)
	}
	fresh := dial(t, s)
	if err := fresh.ReadAt(got, 8192); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("new connection after broken ones: %v", err)
	}
}

func rawHeader(magic uint32, typ uint16, off uint64, n uint32) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint32(b, magic)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], 1)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], n)
	return b
}

// TestHandshakeOptions covers LIST, INFO, unknown options, unknown exports
// and ABORT with raw option exchanges.
func TestHandshakeOptions(t *testing.T) {
	s := startServer(t, "--size", "1M", "--name", "alpha")
	nc, err := net.Dial("unix", s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hello := make([]byte, 18)
	if _, err := readFull(nc, hello); err != nil {
		t.Fatal(err)
	}
	if string(hello[:8]) != "NBDMAGIC" || string(hello[8:16]) != "IHAVEOPT" || hello[17]&1 == 0 {
		t.Fatalf("bad greeting %q", hello)
	}
	nc.Write([]byte{0, 0, 0, 3})
	expect := func(opt uint32, data []byte, wantTypes ...uint32) [][]byte {
		t.Helper()
		if err := nbdclient.SendOption(nc, opt, data); err != nil {
			t.Fatal(err)
		}
		var payloads [][]byte
		for _, want := range wantTypes {
			typ, p, err := nbdclient.ReadOptionReply(nc)
			if err != nil {
				t.Fatal(err)
			}
			if typ != want {
				t.Fatalf("option %d: reply type %#x, want %#x (%q)", opt, typ, want, p)
			}
			payloads = append(payloads, p)
		}
		return payloads
	}
	const errUnsup, errUnknown, errInvalid = 1<<31 | 1, 1<<31 | 6, 1<<31 | 3
	list := expect(3, nil, 2, 1)
	if string(list[0][4:]) != "alpha" {
		t.Fatalf("LIST gave %q", list[0])
	}
	expect(8, nil, errUnsup)            // structured replies: not supported, handshake goes on
	expect(99, []byte("xyz"), errUnsup) // unknown option
	expect(6, infoReq("nope"), errUnknown)
	expect(6, []byte{0, 0, 0, 50, 1}, errInvalid)
	info := expect(6, infoReq("alpha"), 3, 3, 1)
	if binary.BigEndian.Uint64(info[0][2:]) != 1<<20 {
		t.Fatalf("INFO size %x", info[0])
	}
	expect(2, nil, 1) // ABORT
}

func infoReq(name string) []byte {
	b := make([]byte, 4+len(name)+2)
	binary.BigEndian.PutUint32(b, uint32(len(name)))
	copy(b[4:], name)
	return b
}

func readFull(nc net.Conn, b []byte) (int, error) {
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n := 0
	for n < len(b) {
		m, err := nc.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestExportNameUnknown: NBD_OPT_EXPORT_NAME has no error reply, so an
// unknown name closes the connection, and the server goes on.
func TestExportNameUnknown(t *testing.T) {
	s := startServer(t, "--size", "1M")
	nc, err := net.Dial("unix", s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	readFull(nc, make([]byte, 18))
	nc.Write([]byte{0, 0, 0, 3})
	nbdclient.SendOption(nc, 1, []byte("missing"))
	if _, err := readFull(nc, make([]byte, 1)); err == nil {
		t.Fatal("server answered EXPORT_NAME for an unknown export")
	}
	nc.Close()
	dial(t, s) // still serving
}

// TestShutdownFinishesInflight: SIGTERM while a client streams writes;
// everything acknowledged before the end is intact in the final stats, the
// socket is removed and the exit code is 0.
func TestShutdownFinishesInflight(t *testing.T) {
	s := startServer(t, "--size", "64M")
	c := dial(t, s)
	page := bytes.Repeat([]byte("abcdefgh"), 512)
	var acked sync.WaitGroup
	var mu sync.Mutex
	okWrites := 0
	for g := 0; g < 32; g++ {
		acked.Add(1)
		go func() {
			defer acked.Done()
			for i := 0; ; i++ {
				if err := c.WriteAt(page, uint64((g*500+i)%16384)*4096); err != nil {
					return
				}
				mu.Lock()
				okWrites++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	s.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-s.done; err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, s.stderr())
	}
	acked.Wait()
	if okWrites == 0 {
		t.Fatal("no write completed before shutdown")
	}
	if _, err := os.Stat(s.Socket); !os.IsNotExist(err) {
		t.Fatalf("socket still there after shutdown: %v", err)
	}
	mm := lastStat(t, s.stdout(), "mm_stat ")
	if mm[0] == 0 {
		t.Fatalf("final mm_stat shows nothing stored: %v", mm)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--size", "lots"},
		{"serve", "--algorithm", "lzma9"},
		{"serve", "--stream-mode", "fast"},
		{"serve", "--algorithm-params", "speed=3"},
		{"serve", "--size", "0"},
		{"serve", "--streams", "-1"},
	} {
		out, err := exec.Command(uzramBin, args...).CombinedOutput()
		if err == nil {
			t.Errorf("uzram %v succeeded", args)
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "uzram: ") {
			t.Errorf("uzram %v: want one error line, got:\n%s", args, out)
		}
	}
}
