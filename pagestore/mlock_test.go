package pagestore

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLockedMemoryComesBack: under mlockall(MCL_CURRENT|MCL_FUTURE|
// MCL_ONFAULT), as `uzram serve` runs, freeing objects must still give their
// spans back (MADV_DONTNEED refuses locked pages) and reused memory must
// come back locked.
func TestLockedMemoryComesBack(t *testing.T) {
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
		t.Skipf("mlockall not permitted here: %v", err)
	}
	defer unix.Munlockall()
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	obj := bytes.Repeat([]byte{0x5a}, 2000)
	var hs []Handle
	for i := 0; i < 20000; i++ {
		h, err := s.Put(obj)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	for _, h := range hs {
		s.Free(h) // panicked with EINVAL before discard learned to unlock
	}
	if used := s.Stats().MemUsed; used != 0 {
		t.Fatalf("MemUsed %d after freeing everything", used)
	}
	// Reuse the discarded spans: contents intact, memory locked again.
	hs = hs[:0]
	for i := 0; i < 20000; i++ {
		h, err := s.Put(obj)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	got := make([]byte, 4096)
	for _, h := range hs {
		if n := s.Read(h, got); !bytes.Equal(got[:n], obj) {
			t.Fatal("object changed in reused locked memory")
		}
	}
}
