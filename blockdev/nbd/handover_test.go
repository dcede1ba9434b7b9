package nbd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/nbdclient"
	"github.com/uzram/uzram/streams"
)

// TestHandoverUnderLoad hands the server over to a successor again and again
// while clients keep 64 requests each in flight, writing, trimming and
// reading back against a model: no request may fail, be lost or be served
// twice in a way the model would see, and every connection must arrive.
func TestHandoverUnderLoad(t *testing.T) {
	const conns, inflight, region, handovers = 2, 64, 1 << 20, 6
	d, err := blockdev.New(blockdev.Config{Name: "ho", Size: conns * region, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l := ln.(*net.UnixListener)
	srv := NewServer(ServerOptions{})
	if err := srv.AddExport(d); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)

	waitClients := stressClients(t, sock, "ho", conns, region, inflight, 3000)
	leftover := 0
	for i := 0; i < handovers; i++ {
		time.Sleep(30 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		handed, err := srv.Handover(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if len(handed) != conns {
			t.Fatalf("handover %d: %d connections handed over, want %d", i, len(handed), conns)
		}
		// What a successor process gets: the listener as a file.
		lf, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close()
		ln, err := net.FileListener(lf)
		lf.Close()
		if err != nil {
			t.Fatal(err)
		}
		l = ln.(*net.UnixListener)
		next := NewServer(ServerOptions{})
		if err := next.AddExport(d); err != nil {
			t.Fatal(err)
		}
		for _, h := range handed {
			leftover += len(h.Leftover)
			if err := next.Adopt(h); err != nil {
				t.Fatal(err)
			}
		}
		go next.Serve(l)
		srv = next
	}
	waitClients()
	t.Logf("%d handovers, %d bytes of requests handed over unread", handovers, leftover)
	// The listener came along too: a new client gets in.
	c, err := nbdclient.Dial("unix", sock, "ho")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(make([]byte, blockdev.PageSize), 0); err != nil {
		t.Error(err)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Error(err)
	}
	if err := d.Verify(); err != nil {
		t.Fatal(err)
	}
	d.Close()
}

// TestAdoptRefusesUnknownExport: a connection for an export the successor
// lacks is closed, with an error naming it.
func TestAdoptRefusesUnknownExport(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "peer")
	defer peer.Close()
	srv := NewServer(ServerOptions{})
	err = srv.Adopt(HandedConn{File: os.NewFile(uintptr(fds[0]), "handed"), Export: "nope"})
	if err == nil || !strings.Contains(err.Error(), `no export "nope"`) {
		t.Fatalf("Adopt of an unknown export: %v", err)
	}
	// The handed socket was closed: the peer reads EOF.
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("peer read %d bytes, %v; want EOF", n, err)
	}
}
