package nbd

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/blocktest"
	"github.com/uzram/uzram/nbdclient"
	"github.com/uzram/uzram/streams"
)

// startTestServer serves d on a unix socket in this process, so -race sees
// the server's goroutines. At cleanup it shuts the server down, then closes
// d: replies reach clients over a socket, which the race detector does not
// count as synchronisation, so only the server's own drain orders its last
// page access before Close.
func startTestServer(t *testing.T, d *blockdev.Device) string { return startTestServerTB(t, d) }

func startTestServerTB(t testing.TB, d *blockdev.Device) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerOptions{})
	if err := srv.AddExport(d); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		d.Close()
	})
	return sock
}

// TestStressConnections: several connections, each with 128 requests in
// flight, writing, reading back and trimming their own regions of a shared
// device, with verification of every read. Run it under -race.
func TestStressConnections(t *testing.T) {
	const conns, inflight, region = 4, 128, 2 << 20
	d, err := blockdev.New(blockdev.Config{Name: "stress", Size: conns * region, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	sock := startTestServer(t, d) // closes d after the server drains
	ops := 4000
	if testing.Short() {
		ops = 800
	}
	stressClients(t, sock, "stress", conns, region, inflight, ops)()
	if err := d.Verify(); err != nil {
		t.Fatal(err)
	}
}

// stressClients runs stressConn on conns connections to export, each on its
// own region, and returns the function that waits for them all.
func stressClients(t *testing.T, sock, export string, conns, region, inflight, ops int) (wait func()) {
	var all sync.WaitGroup
	for ci := 0; ci < conns; ci++ {
		c, err := nbdclient.Dial("unix", sock, export)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		all.Add(1)
		go func() {
			defer all.Done()
			stressConn(t, c, ci, region, inflight, ops)
		}()
	}
	return all.Wait
}

// stressConn drives one connection's region with up to inflight requests.
func stressConn(t *testing.T, c *nbdclient.Client, ci, region, inflight, ops int) {
	var wg sync.WaitGroup
	base := uint64(ci * region)
	model := make([]byte, region)
	var mu sync.Mutex // model and page ownership
	busy := make(map[uint64]bool)
	sem := make(chan struct{}, inflight)
	for i := 0; i < ops; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			r := rand.New(rand.NewPCG(uint64(ci), uint64(i)))
			page := uint64(r.IntN(region / blockdev.PageSize))
			mu.Lock()
			if busy[page] { // one request per page at a time keeps the model exact
				mu.Unlock()
				return
			}
			busy[page] = true
			mu.Unlock()
			defer func() { mu.Lock(); delete(busy, page); mu.Unlock() }()
			off := page * blockdev.PageSize
			in := uint64(r.IntN(8)) * blockdev.SectorSize
			n := uint64(1+r.IntN(8)) * blockdev.SectorSize
			n = min(n, blockdev.PageSize-in)
			switch r.IntN(4) {
			case 0, 1:
				buf := make([]byte, n)
				blocktest.Fill(r, buf, r.IntN(4))
				if err := c.WriteAt(buf, base+off+in); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				copy(model[off+in:], buf)
				mu.Unlock()
			case 2:
				if err := c.Trim(base+off, blockdev.PageSize); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				clear(model[off : off+blockdev.PageSize])
				mu.Unlock()
			default:
				got := make([]byte, blockdev.PageSize)
				if err := c.ReadAt(got, base+off); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				ok := bytes.Equal(got, model[off:off+blockdev.PageSize])
				mu.Unlock()
				if !ok {
					t.Errorf("conn %d page %d: read differs from the model", ci, page)
				}
			}
		}()
	}
	wg.Wait()
	got := make([]byte, region)
	if err := c.ReadAt(got, base); err != nil {
		t.Error(err)
		return
	}
	if !bytes.Equal(got, model) {
		t.Errorf("conn %d: region differs from the model at the end", ci)
	}
}
