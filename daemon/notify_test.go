package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/control"
)

// TestServiceManagerNotify runs the daemon under a fake service manager:
// a notify socket, and a 200 ms watchdog. READY=1 must come only once the
// sockets accept, with a STATUS= naming the device; WATCHDOG=1 must keep
// coming; a new device shows in STATUS=; STOPPING=1 comes at shutdown.
func TestServiceManagerNotify(t *testing.T) {
	dir := t.TempDir()
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	t.Setenv("NOTIFY_SOCKET", filepath.Join(dir, "notify"))
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nl.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case m := <-msgs:
			return m
		case <-time.After(10 * time.Second):
			t.Fatalf("no notification while waiting for %s", what)
			return ""
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	ctl := filepath.Join(dir, "control.sock")
	go func() {
		done <- Run(ctx, Config{
			Device: blockdev.Config{Name: "uzram0", Size: 16 << 20, Streams: 1},
			Socket: filepath.Join(dir, "uzram0.sock"), Control: ctl,
			Stdout: io.Discard, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}()
	ready := next("READY=1")
	if !strings.HasPrefix(ready, "READY=1\nSTATUS=1 device: uzram0; 0B stored in ") {
		t.Fatalf("first notification %q; want READY=1 and the status", ready)
	}
	// Ready means ready: both sockets answer now.
	for _, s := range []string{ctl, filepath.Join(dir, "uzram0.sock")} {
		c, err := net.Dial("unix", s)
		if err != nil {
			t.Fatalf("READY=1 sent before %s accepts: %v", s, err)
		}
		c.Close()
	}
	pings := 0
	for pings < 3 {
		if m := next("WATCHDOG=1"); strings.Contains(m, "WATCHDOG=1") {
			pings++
		}
	}
	if _, err := control.NewClient(ctl).Create(control.CreateRequest{Name: "uzram1", Size: "8M"}); err != nil {
		t.Fatal(err)
	}
	for {
		if m := next("a STATUS= with uzram1"); strings.Contains(m, "STATUS=2 devices: uzram0, uzram1;") {
			break
		}
	}
	cancel()
	for !strings.HasPrefix(next("STOPPING=1"), "STOPPING=1") {
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
