package tests

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

// TestTakeoverKeepsConnections replaces a running daemon with `serve
// --takeover` while a client keeps 8 requests in flight: the client's
// connection never drops, no request fails, every page reads back as last
// written (before, during and after), and the successor serves new clients
// and the control API on the same sockets.
func TestTakeoverKeepsConnections(t *testing.T) {
	const pages, workers = 2048, 8
	state := filepath.Join(t.TempDir(), "state.img")
	args := []string{"--size", "8M", "--state-file", state}
	old := startServer(t, args...)
	c := dial(t, old)
	version := make([]atomic.Uint32, pages)
	for p := range uint32(pages) {
		if err := c.WriteAt(takeoverPage(p, 0), uint64(p)*4096); err != nil {
			t.Fatal(err)
		}
	}
	var stop atomic.Bool
	var ops, longest atomic.Int64 // longest: ns, the gap the client saw
	var wg sync.WaitGroup
	for w := range uint32(workers) {
		wg.Add(1)
		go func() { // worker w owns the pages p with p % workers == w
			defer wg.Done()
			got := make([]byte, 4096)
			for i := uint32(0); !stop.Load(); i++ {
				start := time.Now()
				p := w + workers*(i*7%(pages/workers))
				v := version[p].Load()
				if i%2 == 0 {
					v++
					if err := c.WriteAt(takeoverPage(p, v), uint64(p)*4096); err != nil {
						t.Errorf("write page %d during takeover: %v", p, err)
						return
					}
					version[p].Store(v)
				} else if err := c.ReadAt(got, uint64(p)*4096); err != nil {
					t.Errorf("read page %d during takeover: %v", p, err)
					return
				} else if !bytes.Equal(got, takeoverPage(p, v)) {
					t.Errorf("page %d: read differs from version %d", p, v)
					return
				}
				ops.Add(1)
				for d := int64(time.Since(start)); ; {
					if l := longest.Load(); d <= l || longest.CompareAndSwap(l, d) {
						break
					}
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	before := ops.Load()
	succ := launchServer(t, old.Socket, append(args, "--takeover")...)
	select {
	case err := <-old.done:
		if err != nil {
			t.Fatalf("old daemon: %v: %s", err, old.stderr())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("old daemon still running: %s", old.stderr())
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(succ.stderr(), "took over") {
		if time.Now().After(deadline) {
			t.Fatalf("successor never took over: %s", succ.stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	during := ops.Load()
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	after := ops.Load()
	t.Logf("requests: %d before the takeover, %d until the successor took over, %d after; the longest took %v",
		before, during-before, after-during, time.Duration(longest.Load()).Round(time.Millisecond))
	if after == during {
		t.Error("no request completed after the takeover")
	}
	if !strings.Contains(old.stderr(), "handed over") || !strings.Contains(old.stderr(), "connections=1") {
		t.Errorf("old daemon's log lacks the handover of 1 connection: %s", old.stderr())
	}
	select {
	case <-c.Closed():
		t.Fatal("the client's connection closed")
	default:
	}
	// Everything, through the connection that lived through it and through
	// a new one.
	fresh, err := nbdclient.Dial("unix", succ.Socket, succ.Name)
	if err != nil {
		t.Fatalf("new connection to the successor: %v", err)
	}
	defer fresh.Close()
	got := make([]byte, 4096)
	for p := range uint32(pages) {
		want := takeoverPage(p, version[p].Load())
		for _, cl := range []*nbdclient.Client{c, fresh} {
			if err := cl.ReadAt(got, uint64(p)*4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("page %d differs after the takeover", p)
			}
		}
	}
	if out := cliOK(t, succ); !strings.Contains(out, succ.Name) {
		t.Errorf("control API after the takeover lists: %s", out)
	}
}

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
		{plain.Socket, []string{"--size", "4M", "--state-file", filepath.Join(dir, "s.img"), "--takeover"},
			"takeover refused: the running daemon has no --state-file"},
		{plain.Socket, []string{"--size", "4M", "--takeover"}, "--takeover needs --state-file"},
		{plain.Socket, []string{"--size", "4M", "--name", "other", "--state-file", filepath.Join(dir, "s.img"), "--takeover"},
			"takeover refused: the running daemon serves device uzram0, not other"},
		{filepath.Join(dir, "nobody.sock"), []string{"--size", "4M", "--state-file", filepath.Join(dir, "s.img"), "--takeover"},
			"takeover: no daemon answers on"},
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
