package tests

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/uzram/uzram/nbdclient"
)

// compressiblePage is a distinct page that lz4 shrinks to about half.
func compressiblePage(seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 77))
	p := make([]byte, 4096)
	for i := 0; i < len(p); i += 2 {
		p[i] = byte(r.Uint32())
	}
	return p
}

// TestMemLimitOverNBD fills a device to its mem_limit, checks the refusal is
// ENOSPC and loses nothing, trims, writes again and verifies everything.
func TestMemLimitOverNBD(t *testing.T) {
	const limit = 2 << 20
	s := startServer(t, "--size", "64M", "--mem-limit", "2M")
	c := dial(t, s)
	var written []uint64
	refused := -1
	for p := uint64(0); p < 16384; p++ {
		err := c.WriteAt(compressiblePage(p), p*4096)
		if err == nil {
			written = append(written, p)
			continue
		}
		if code := nbdclient.Code(err); code != 28 {
			t.Fatalf("write past mem_limit: %v, want ENOSPC (28)", err)
		}
		refused = int(p)
		break
	}
	if refused < 0 {
		t.Fatal("64M of half-compressible pages fit in a 2M mem_limit")
	}
	mm, io := s.stats(t)
	if mm[2] > limit || mm[3] != limit {
		t.Fatalf("mem_used_total %d over mem_limit %d (mm_stat %v)", mm[2], mm[3], mm)
	}
	if io[1] < 1 {
		t.Fatalf("failed_writes %d after a refusal", io[1])
	}
	// Zero pages cost nothing and still succeed at the limit.
	if err := c.WriteAt(make([]byte, 4096), uint64(refused)*4096); err != nil {
		t.Fatalf("zero page at mem_limit: %v", err)
	}
	verify := func() {
		t.Helper()
		got := make([]byte, 4096)
		for _, p := range written {
			if err := c.ReadAt(got, p*4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, compressiblePage(p)) {
				t.Fatalf("page %d changed", p)
			}
		}
	}
	verify()
	// Trim the first half; the space comes back and new writes succeed.
	half := written[:len(written)/2]
	for _, p := range half {
		if err := c.Trim(p*4096, 4096); err != nil {
			t.Fatal(err)
		}
	}
	written = written[len(written)/2:]
	for i := range len(half) / 2 {
		p := uint64(8000 + i) // past the pages filled so far, inside the 64M device
		if err := c.WriteAt(compressiblePage(p), p*4096); err != nil {
			t.Fatalf("write after trimming half: %v", err)
		}
		written = append(written, p)
	}
	verify()
}
