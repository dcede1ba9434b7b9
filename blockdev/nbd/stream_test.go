package nbd

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/blocktest"
	"github.com/uzram/uzram/nbdclient"
	"github.com/uzram/uzram/streams"
)

// TestLargeRequests: WRITEs stored page by page off the socket and READs
// streamed a chunk at a time, at every alignment and size up to a few
// chunks, many in flight on one connection together with one-page
// requests, all checked against a model.
func TestLargeRequests(t *testing.T) {
	const size = 16 << 20
	d, err := blockdev.New(blockdev.Config{Name: "big", Size: size, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	sock := startTestServer(t, d)
	c, err := nbdclient.Dial("unix", sock, "big")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	model := make([]byte, size)
	var mu sync.Mutex
	busy := make([]bool, size/blockdev.PageSize) // pages a request in flight covers
	claim := func(off, n uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		first, last := off/blockdev.PageSize, (off+n-1)/blockdev.PageSize
		for p := first; p <= last; p++ {
			if busy[p] {
				return false
			}
		}
		for p := first; p <= last; p++ {
			busy[p] = true
		}
		return true
	}
	release := func(off, n uint64) {
		mu.Lock()
		defer mu.Unlock()
		for p := off / blockdev.PageSize; p <= (off+n-1)/blockdev.PageSize; p++ {
			busy[p] = false
		}
	}
	ops := 400
	if testing.Short() {
		ops = 120
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range ops {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			r := rand.New(rand.NewPCG(17, uint64(i)))
			var n uint64
			switch r.IntN(3) {
			case 0:
				n = blockdev.PageSize
			case 1:
				n = uint64(1+r.IntN(64)) * blockdev.SectorSize
			default:
				n = uint64(1+r.IntN(3*streamChunk/blockdev.SectorSize)) * blockdev.SectorSize
			}
			off := uint64(r.IntN(int(size-n)/blockdev.SectorSize)) * blockdev.SectorSize
			if !claim(off, n) {
				return
			}
			defer release(off, n)
			if r.IntN(2) == 0 {
				buf := make([]byte, n)
				blocktest.Fill(r, buf, r.IntN(4))
				if err := c.WriteAt(buf, off); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				copy(model[off:], buf)
				mu.Unlock()
				return
			}
			got := make([]byte, n)
			if err := c.ReadAt(got, off); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ok := bytes.Equal(got, model[off:off+n])
			mu.Unlock()
			if !ok {
				t.Errorf("read of %d bytes at %d differs from the model", n, off)
			}
		}()
	}
	wg.Wait()
	got := make([]byte, size)
	if err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("device differs from the model at the end")
	}
	if err := d.Verify(); err != nil {
		t.Fatal(err)
	}
}
