package blockdev

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev/blocktest"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

// TestAlgorithmSwitchUnderLoad switches the primary algorithm while writers
// write and verify; old pages keep reading through the pool that compressed
// them, and that pool is destroyed once its last page is gone.
func TestAlgorithmSwitchUnderLoad(t *testing.T) {
	const size = 4 << 20
	d, err := New(Config{Name: "sw", Size: size, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const writers = 4
	region := size / writers
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 5))
			model := make([]byte, region)
			base := uint64(w * region)
			got := make([]byte, PageSize)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := uint64(r.IntN(region/PageSize)) * PageSize
				if i%3 == 2 {
					if err := d.ReadAt(got, base+off); err != nil {
						t.Error(err)
						return
					}
					if !bytes.Equal(got, model[off:off+PageSize]) {
						t.Errorf("writer %d: page at %d differs after a switch", w, off)
						return
					}
					continue
				}
				blocktest.Fill(r, model[off:off+PageSize], 3)
				if err := d.WriteAt(model[off:off+PageSize], base+off, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for _, algo := range []string{"zstd", "deflate", "lz4hc", "lz4"} {
		time.Sleep(150 * time.Millisecond)
		if err := d.SetAlgorithm(algo, zcomp.Params{}, ""); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := len(d.Compressors()); n < 2 {
		t.Logf("only %d compressor(s) hold pages after four switches", n)
	}
	// Rewrite every page with the current algorithm: the old pools lose
	// their last pages and must be destroyed.
	buf := make([]byte, size)
	if err := d.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	d.Discard(0, size)
	if err := d.WriteAt(buf, 0, nil); err != nil {
		t.Fatal(err)
	}
	if got := d.Compressors(); len(got) != 1 || got[0].Algorithm != "lz4" || !got[0].Current {
		t.Fatalf("after rewriting everything, compressors are %+v, want only the current lz4", got)
	}
	if r := d.CompressorsReleased(); r != 4 {
		t.Fatalf("%d old pools destroyed, want 4", r)
	}
	check := make([]byte, size)
	if err := d.ReadAt(check, 0); err != nil || !bytes.Equal(check, buf) {
		t.Fatalf("data changed across the switches (err %v)", err)
	}
}
