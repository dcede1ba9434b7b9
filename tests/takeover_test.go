package tests

import (
	"bytes"
	"encoding/binary"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/uzram/uzram/nbdclient"
)

// takeoverPage is page p's content at version v: compressible, and unique.
func takeoverPage(p, v uint32) []byte {
	b := bytes.Repeat([]byte("uzram takeover "), 4096/15+1)[:4096]
	binary.LittleEndian.PutUint32(b[0:], p)
	binary.LittleEndian.PutUint32(b[100:], v)
	return b
}

// load keeps workers requests in flight on c over pages pages, writing new
// versions and reading back the last one written, until stop.
type load struct {
	t              *testing.T
	c              *nbdclient.Client
	pages, workers uint32
	version        []atomic.Uint32
	halt           atomic.Bool
	ops, longest   atomic.Int64 // longest: ns, the gap the client saw
	wg             sync.WaitGroup
}

func startLoad(t *testing.T, c *nbdclient.Client, pages, workers uint32) *load {
	l := &load{t: t, c: c, pages: pages, workers: workers, version: make([]atomic.Uint32, pages)}
	for p := range pages {
		if err := c.WriteAt(takeoverPage(p, 0), uint64(p)*4096); err != nil {
			t.Fatal(err)
		}
	}
	for w := range workers {
		l.wg.Add(1)
		go l.run(w)
	}
	return l
}

// run is worker w: it owns the pages p with p % workers == w.
func (l *load) run(w uint32) {
	defer l.wg.Done()
	got := make([]byte, 4096)
	for i := uint32(0); !l.halt.Load(); i++ {
		start := time.Now()
		p := w + l.workers*(i*7%(l.pages/l.workers))
		v := l.version[p].Load()
		if i%2 == 0 {
			v++
			if err := l.c.WriteAt(takeoverPage(p, v), uint64(p)*4096); err != nil {
				l.t.Errorf("write page %d during takeover: %v", p, err)
				return
			}
			l.version[p].Store(v)
		} else if err := l.c.ReadAt(got, uint64(p)*4096); err != nil {
			l.t.Errorf("read page %d during takeover: %v", p, err)
			return
		} else if !bytes.Equal(got, takeoverPage(p, v)) {
			l.t.Errorf("page %d: read differs from version %d", p, v)
			return
		}
		l.ops.Add(1)
		for d := int64(time.Since(start)); ; {
			if old := l.longest.Load(); d <= old || l.longest.CompareAndSwap(old, d) {
				break
			}
		}
	}
}

func (l *load) stop() { l.halt.Store(true); l.wg.Wait() }

// carried checks what a handover must keep: the load's connection open,
// and every page as last written, through it and a new connection to
// export on sock.
func (l *load) carried(sock, export string) {
	select {
	case <-l.c.Closed():
		l.t.Fatal("the client's connection closed")
	default:
	}
	fresh, err := nbdclient.Dial("unix", sock, export)
	if err != nil {
		l.t.Fatalf("new connection to %s after the handover: %v", export, err)
	}
	defer fresh.Close()
	l.verify(l.c, fresh)
}

// verify reads every page back through each client.
func (l *load) verify(clients ...*nbdclient.Client) {
	got := make([]byte, 4096)
	for p := range l.pages {
		want := takeoverPage(p, l.version[p].Load())
		for _, cl := range clients {
			if err := cl.ReadAt(got, uint64(p)*4096); err != nil {
				l.t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				l.t.Fatalf("page %d differs after the takeover", p)
			}
		}
	}
}

// waitLog waits until text shows in logs().
func waitLog(t *testing.T, what string, logs func() string, text string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(logs(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never logged %q: %s", what, text, logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTakeoverKeepsConnections replaces a running daemon with `serve
// --takeover` while a client keeps 8 requests in flight: the client's
// connection never drops, no request fails, every page reads back as last
// written (before, during and after), and the successor serves new clients
// and the control API on the same sockets.
func TestTakeoverKeepsConnections(t *testing.T) {
	args := []string{"--size", "8M", "--state-file", filepath.Join(t.TempDir(), "state.img")}
	old := startServer(t, args...)
	c := dial(t, old)
	l := startLoad(t, c, 2048, 8)
	time.Sleep(200 * time.Millisecond)
	before := l.ops.Load()
	succ := launchServer(t, old.Socket, append(args, "--takeover")...)
	select {
	case err := <-old.done:
		if err != nil {
			t.Fatalf("old daemon: %v: %s", err, old.stderr())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("old daemon still running: %s", old.stderr())
	}
	waitLog(t, "the successor", succ.stderr, "took over")
	during := l.ops.Load()
	time.Sleep(300 * time.Millisecond)
	l.stop()
	after := l.ops.Load()
	t.Logf("requests: %d before the takeover, %d until the successor took over, %d after; the longest took %v",
		before, during-before, after-during, time.Duration(l.longest.Load()).Round(time.Millisecond))
	if after == during {
		t.Error("no request completed after the takeover")
	}
	if !strings.Contains(old.stderr(), "handed over") || !strings.Contains(old.stderr(), "connections=1") {
		t.Errorf("old daemon's log lacks the handover of 1 connection: %s", old.stderr())
	}
	// Each side logs the other's version: an upgrade shows as old -> new.
	v := binaryVersion(t)
	if !strings.Contains(old.stderr(), `successor_version="`+v+`"`) || !strings.Contains(succ.stderr(), `predecessor_version="`+v+`"`) {
		t.Errorf("the takeover's logs lack the other side's version %q:\nold: %s\nnew: %s", v, old.stderr(), succ.stderr())
	}
	l.carried(succ.Socket, succ.Name)
	if out := cliOK(t, succ); !strings.Contains(out, succ.Name) {
		t.Errorf("control API after the takeover lists: %s", out)
	}
}

// TestTakeoverRuntimeDevices: a daemon started with --no-device, as the
// systemd unit runs it, hands over the devices created through the CLI,
// with their algorithms, contents and sockets, while one of them is in use.
func TestTakeoverRuntimeDevices(t *testing.T) {
	dir := t.TempDir()
	s := &server{Socket: filepath.Join(dir, "none")} // control() is dir/control.sock
	// serve starts a daemon; exited is closed once it has, with *status set.
	serve := func(extra ...string) (errOut *syncBuffer, exited chan struct{}, status *error) {
		cmd := exec.Command(uzramBin, append([]string{"serve", "--no-device", "--socket-dir", dir, "--no-mlock"}, extra...)...)
		errOut, exited, status = &syncBuffer{}, make(chan struct{}), new(error)
		cmd.Stderr = errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { *status = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			<-exited
			if strings.Contains(errOut.String(), "DATA RACE") {
				t.Errorf("race in uzram:\n%s", errOut.String())
			}
		})
		return errOut, exited, status
	}
	oldErr, oldExited, oldStatus := serve()
	waitLog(t, "the daemon", oldErr.String, "control API")
	if out := cliOK(t, s, "--find", "--size", "4M"); out != "uzram0\n" {
		t.Fatalf("--find printed %q", out)
	}
	if out := cliOK(t, s, "--find", "--size", "8M", "--algorithm", "zstd"); out != "uzram1\n" {
		t.Fatalf("--find printed %q", out)
	}
	writePages(t, filepath.Join(dir, "uzram0.sock"), "uzram0", 1, 1, 30)
	listing := cliOK(t, s, "-n", "-o", "NAME,ALGORITHM,DISKSIZE,DATA")
	c, err := nbdclient.Dial("unix", filepath.Join(dir, "uzram1.sock"), "uzram1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := startLoad(t, c, 1024, 4)
	time.Sleep(100 * time.Millisecond)

	newErr, newExited, newStatus := serve("--takeover")
	select {
	case <-oldExited:
		if *oldStatus != nil {
			t.Fatalf("old daemon: %v: %s", *oldStatus, oldErr.String())
		}
	case <-newExited:
		t.Fatalf("successor exited: %v: %s", *newStatus, newErr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("old daemon still running: %s", oldErr.String())
	}
	waitLog(t, "the successor", newErr.String, "took over")
	time.Sleep(200 * time.Millisecond)
	l.stop()
	t.Logf("uzram1 under load: %d requests, the longest %v", l.ops.Load(), time.Duration(l.longest.Load()).Round(time.Millisecond))
	if !strings.Contains(oldErr.String(), "devices=2 connections=1") {
		t.Errorf("old daemon's log lacks the handover of 2 devices and 1 connection: %s", oldErr.String())
	}
	l.carried(filepath.Join(dir, "uzram1.sock"), "uzram1")
	if got := cliOK(t, s, "-n", "-o", "NAME,ALGORITHM,DISKSIZE,DATA"); !strings.HasPrefix(got, strings.SplitN(listing, "\n", 2)[0]) ||
		!strings.Contains(got, "uzram1 zstd 8M") {
		t.Errorf("after the takeover the devices list as\n%s\nbefore\n%s", got, listing)
	}
	// uzram0's pages, through its own socket, carried too.
	u0, err := nbdclient.Dial("unix", filepath.Join(dir, "uzram0.sock"), "uzram0")
	if err != nil {
		t.Fatal(err)
	}
	defer u0.Close()
	got := make([]byte, 4096)
	if err := u0.ReadAt(got, 1*4096); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0xab}, 4096)) {
		t.Errorf("uzram0 page 1 after the takeover: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for a process's writes and our reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}
func (b *syncBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.b.String() }

// TestTakeoverRefused: a takeover that cannot work is one line and a
// non-zero exit, and a running daemon it asks keeps serving.
func TestTakeoverRefused(t *testing.T) {
	dir := t.TempDir()
	plain := startServer(t, "--size", "4M")
	c := dial(t, plain)
	if err := c.WriteAt(takeoverPage(1, 1), 4096); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		socket string
		args   []string
		want   string
	}{
		{plain.Socket, []string{"--size", "4M", "--name", "other", "--takeover"},
			"takeover refused: the running daemon serves device uzram0, not other"},
		{plain.Socket, []string{"--size", "4M", "--listen", "127.0.0.1:0", "--takeover"},
			"takeover refused: the running daemon listens on TCP"},
		{filepath.Join(dir, "nobody.sock"), []string{"--size", "4M", "--takeover"}, "takeover: no daemon answers on"},
	} {
		s := launchServer(t, tc.socket, tc.args...)
		select {
		case err := <-s.done:
			if err == nil {
				t.Errorf("%v: exit 0, want an error", tc.args)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%v: still running: %s", tc.args, s.stderr())
		}
		lines := strings.Split(strings.TrimSpace(s.stderr()), "\n")
		if last := lines[len(lines)-1]; !strings.Contains(last, tc.want) || !strings.HasPrefix(last, "uzram: ") {
			t.Errorf("%v: last line %q, want %q", tc.args, last, tc.want)
		}
	}
	got := make([]byte, 4096)
	if err := c.ReadAt(got, 4096); err != nil || !bytes.Equal(got, takeoverPage(1, 1)) {
		t.Fatalf("the daemon asked to hand over no longer serves: %v", err)
	}
}

// TestReexecKeepsConnections: SIGUSR2 makes the daemon re-execute its
// binary in place (what `systemctl reload` does with the unit's
// ExecReload), handing everything to the new image as to a successor: the
// PID stays, the client's connection and every page with it.
func TestReexecKeepsConnections(t *testing.T) {
	s := startServer(t, "--size", "8M")
	c := dial(t, s)
	l := startLoad(t, c, 2048, 8)
	time.Sleep(200 * time.Millisecond)
	if err := s.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitLog(t, "the re-executed daemon", s.stderr, "took over")
	time.Sleep(300 * time.Millisecond)
	l.stop()
	t.Logf("%d requests, the longest %v", l.ops.Load(), time.Duration(l.longest.Load()).Round(time.Millisecond))
	select {
	case err := <-s.done:
		t.Fatalf("the daemon exited: %v: %s", err, s.stderr())
	default:
	}
	if !strings.Contains(s.stderr(), "re-executing in place") || !strings.Contains(s.stderr(), "devices=1 connections=1") {
		t.Errorf("no re-exec with 1 device and 1 connection in the log: %s", s.stderr())
	}
	// The old image names the binary it is about to run, by its build
	// information, and the new one its predecessor.
	if v := binaryVersion(t); !strings.Contains(s.stderr(), `new_version="`+v+`"`) || !strings.Contains(s.stderr(), `predecessor_version="`+v+`"`) {
		t.Errorf("the re-exec's log lacks the versions %q on both sides: %s", v, s.stderr())
	}
	l.carried(s.Socket, s.Name)
	if out := cliOK(t, s); !strings.Contains(out, s.Name) {
		t.Errorf("control API after the re-exec lists: %s", out)
	}
}
