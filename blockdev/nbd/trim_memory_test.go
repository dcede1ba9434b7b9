package nbd

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/nbdclient"
	"github.com/uzram/uzram/streams"
)

// TestTrimAllGivesMemoryBack: a device filled over NBD at full speed, which
// may boost the store's reserve (a pool ran dry), then trimmed whole with one
// NBD TRIM holds no store memory (mem_used_total 0) and, shortly after, no
// more reserve and bookkeeping than a new device: what the fill added goes
// back to the OS. (pagestore's TestReserveShrinksWhenEmpty boosts for sure.)
func TestTrimAllGivesMemoryBack(t *testing.T) {
	const size, conns, depth, req = 32 << 20, 4, 16, 128 << 10
	d, err := blockdev.New(blockdev.Config{Name: "t", Size: size, Algorithm: "lz4", StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	fresh := d.Stats()
	sock := startTestServer(t, d)
	// Pages of ~2 KiB compressed (random, then zeros), all in one pool: the
	// hottest stream for the reserve, as a fio fill is.
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, req)
	for p := 0; p < req; p += blockdev.PageSize {
		for i := range 2000 {
			buf[p+i] = byte(r.Uint32())
		}
	}
	var wg sync.WaitGroup
	for ci := range conns {
		c, err := nbdclient.Dial("unix", sock, d.Name())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for k := range depth { // requests in flight per connection
			wg.Add(1)
			go func() {
				defer wg.Done()
				for off := uint64(ci*depth+k) * req; off < size; off += conns * depth * req {
					if err := c.WriteAt(buf, off); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	filled := d.Stats()
	t.Logf("filled: mem_used_total %d MiB, reserve %d KiB (%d KiB when new), store bookkeeping %d KiB (%d KiB when new)",
		filled.MemUsedTotal>>20, filled.StoreReserveBytes>>10, fresh.StoreReserveBytes>>10,
		filled.StoreMetaBytes>>10, fresh.StoreMetaBytes>>10)
	if filled.MemUsedTotal < size/4 {
		t.Fatalf("mem_used_total %d after writing %d MiB", filled.MemUsedTotal, size>>20)
	}
	c, err := nbdclient.Dial("unix", sock, d.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Trim(0, size); err != nil {
		t.Fatal(err)
	}
	if st := d.Stats(); st.MemUsedTotal != 0 || st.ComprDataSize != 0 || st.OrigDataSize != 0 {
		t.Fatalf("after TRIM of the whole device: mem_used_total %d, compr_data_size %d, orig_data_size %d",
			st.MemUsedTotal, st.ComprDataSize, st.OrigDataSize)
	}
	// The refiller shrinks the reserve once the store is empty.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := d.Stats()
		if st.StoreReserveBytes <= fresh.StoreReserveBytes && st.StoreMetaBytes <= fresh.StoreMetaBytes+8<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the TRIM: reserve %d KiB, bookkeeping %d KiB; %d and %d KiB when new",
				st.StoreReserveBytes>>10, st.StoreMetaBytes>>10, fresh.StoreReserveBytes>>10, fresh.StoreMetaBytes>>10)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
