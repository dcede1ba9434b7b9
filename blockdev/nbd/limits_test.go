package nbd

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/nbdclient"
	"github.com/uzram/uzram/streams"
)

func limitsServer(t *testing.T, opts ServerOptions) (*Server, *blockdev.Device, string) {
	t.Helper()
	d, err := blockdev.New(blockdev.Config{Name: "lim", Size: 64 << 20, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if opts.Logger == nil {
		opts.Logger = discardLogger()
	}
	srv := NewServer(opts)
	if err := srv.AddExport(d); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return srv, d, sock
}

// hostile negotiates and returns the raw socket, for clients that misbehave.
func hostile(t *testing.T, sock string) net.Conn {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if err := fzNegotiate(nc, nil); err != nil {
		t.Fatal(err)
	}
	return nc
}

// TestHostileReadsPinNothing: clients that send 1 MiB READs and never read
// the replies pin no memory beyond their connections' fixed buffers (a
// buffer per READ, as before, would have pinned 200 MiB each), a polite
// client on another connection is served meanwhile, and the stall watchdog
// drops the hostile connections once their replies stay unsent.
func TestHostileReadsPinNothing(t *testing.T) {
	const mib = 1 << 20
	srv, d, sock := limitsServer(t, ServerOptions{StallTimeout: 2 * time.Second})
	page := bytes.Repeat([]byte("precious"), 512)
	polite, err := nbdclient.Dial("unix", sock, "lim")
	if err != nil {
		t.Fatal(err)
	}
	defer polite.Close()
	if err := polite.WriteAt(page, 0); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var senders sync.WaitGroup
	for h := 0; h < 2; h++ {
		nc := hostile(t, sock)
		senders.Add(1)
		go func() {
			defer senders.Done()
			for i := uint64(0); i < 200; i++ { // 200 MiB asked for
				if _, err := nc.Write(fzRequest(proto.RequestMagic, 0, proto.CmdRead, i, i%64*mib, mib)); err != nil {
					return // dropped by the watchdog: expected
				}
			}
		}()
	}
	// Let the hostile connections fill their sockets and stall.
	time.Sleep(500 * time.Millisecond)
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	if grew := int64(during.HeapInuse) - int64(before.HeapInuse); grew > 8*mib {
		t.Errorf("the heap grew by %d MiB while hostile READs were pending", grew/mib)
	}
	start := time.Now()
	got := make([]byte, len(page))
	if err := polite.ReadAt(got, 0); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("polite read: %v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("the polite read waited %v behind the hostile connections", el)
	}
	senders.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		srv.mu.Lock()
		n := len(srv.conns)
		srv.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open: the watchdog dropped no stalled one", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := polite.WriteAt(page, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Verify(); err != nil {
		t.Fatal(err)
	}
}

// TestStalledRequests: a client that stops inside a request header or a
// WRITE payload is dropped after StallTimeout, without holding up anyone
// else meanwhile; its half-sent write changes no page it did not send in
// full; an idle connection (between requests) is never dropped.
func TestStalledRequests(t *testing.T) {
	const stall = time.Second
	_, d, sock := limitsServer(t, ServerOptions{StallTimeout: stall})
	good, err := nbdclient.Dial("unix", sock, "lim")
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	keep := bytes.Repeat([]byte{0xa5, 0x5a, 1, 2}, 1024)
	if err := good.WriteAt(keep, 8192); err != nil {
		t.Fatal(err)
	}
	idle := hostile(t, sock)
	halfHeader := hostile(t, sock)
	halfHeader.Write(fzRequest(proto.RequestMagic, 0, proto.CmdRead, 1, 0, 4096)[:10])
	halfPayload := hostile(t, sock)
	halfPayload.Write(fzRequest(proto.RequestMagic, 0, proto.CmdWrite, 2, 8192, 1<<20))
	halfPayload.Write(make([]byte, 1000)) // zeros over "keep", never finished

	// Meanwhile the good client is served at once.
	for i := 0; i < 50; i++ {
		start := time.Now()
		if err := good.WriteAt(keep, 16384); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el > stall/2 {
			t.Fatalf("a good request took %v while others stalled", el)
		}
	}
	for name, nc := range map[string]net.Conn{"half header": halfHeader, "half payload": halfPayload} {
		nc.SetReadDeadline(time.Now().Add(5 * stall))
		if _, err := io.ReadFull(nc, make([]byte, 1)); err != io.EOF {
			t.Fatalf("%s: want the server to hang up, got %v", name, err)
		}
	}
	got := make([]byte, len(keep))
	if err := good.ReadAt(got, 8192); err != nil || !bytes.Equal(got, keep) {
		t.Fatalf("page under the abandoned write changed: %v", err)
	}
	// The idle connection outlived several stall timeouts and still works.
	idle.Write(fzRequest(proto.RequestMagic, 0, proto.CmdRead, 3, 8192, 4096))
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply := make([]byte, proto.ReplyHeaderSize+4096)
	if _, err := io.ReadFull(idle, reply); err != nil || !bytes.Equal(reply[proto.ReplyHeaderSize:], keep) {
		t.Fatalf("idle connection: %v", err)
	}
	if err := d.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	_, _, sock := limitsServer(t, ServerOptions{HandshakeTimeout: 300 * time.Millisecond})
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(nc, make([]byte, 18)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := io.ReadFull(nc, make([]byte, 1)); err != io.EOF {
		t.Fatalf("silent client: want EOF from the server, got %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("hung up after %v", el)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestConnectionChurn: 1,000 connections opened and closed at every stage
// (before the greeting is read, mid-handshake, after GO, with requests in
// flight) leak no goroutine and no file descriptor, and hurt no data.
func TestConnectionChurn(t *testing.T) {
	srv, d, sock := limitsServer(t, ServerOptions{})
	keep := bytes.Repeat([]byte("churn ok"), 512)
	if err := d.WriteAt(keep, 0, nil); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), countFDs(t)
	n := 1000
	if testing.Short() {
		n = 200
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			nc, err := net.Dial("unix", sock)
			if err != nil {
				t.Error(err)
				return
			}
			defer nc.Close()
			switch i % 4 {
			case 0: // gone at once
			case 1: // half a handshake
				nc.Write([]byte{0, 0, 0, 3, 'I', 'H'})
			case 2: // GO, then a request in flight
				if fzNegotiate(nc, nil) == nil {
					nc.Write(fzRequest(proto.RequestMagic, 0, proto.CmdRead, 1, 0, 65536))
				}
			case 3: // a clean session
				if fzNegotiate(nc, nil) == nil {
					nc.Write(fzRequest(proto.RequestMagic, 0, proto.CmdDisc, 0, 0, 0))
				}
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		srv.mu.Lock()
		conns := len(srv.conns)
		srv.mu.Unlock()
		g, fds := runtime.NumGoroutine(), countFDs(t)
		if conns == 0 && g <= baseG+2 && fds <= baseFD {
			t.Logf("%d connections: goroutines %d -> %d, fds %d -> %d", n, baseG, g, baseFD, fds)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d connections: %d still open, goroutines %d (was %d), fds %d (was %d)", n, conns, g, baseG, fds, baseFD)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := nbdclient.Dial("unix", sock, "lim")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, len(keep))
	if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, keep) {
		t.Fatalf("after the churn: %v", err)
	}
}
