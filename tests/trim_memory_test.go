package tests

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/uzram/uzram/nbdclient"
)

// vmRSS is the server's resident memory, for the log only: the tests judge
// memory by mm_stat, RSS is noisy (and bigger under -race).
func vmRSS(s *server) int64 {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(s.cmd.Process.Pid) + "/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestTrimAllReturnsMemory: the server as it runs for swap (memory locked)
// is filled at full speed by fio, then the whole device is trimmed with one
// TRIM (as after swapoff): mm_stat shows no data and no store memory left.
func TestTrimAllReturnsMemory(t *testing.T) {
	need(t, "fio")
	s := startServer(t, "--size", "128M")
	rss0 := vmRSS(s)
	fio(t, s, "--rw=write", "--bs=128k", "--size=128M", "--iodepth=16",
		"--buffer_compress_percentage=50", "--refill_buffers")
	filled, _ := s.stats(t)
	rss1 := vmRSS(s)
	if filled[2] < 32<<20 {
		t.Fatalf("mem_used_total %d after writing 128M (mm_stat %v)", filled[2], filled)
	}
	c := dial(t, s)
	if err := c.Trim(0, 128<<20); err != nil {
		t.Fatalf("TRIM of the whole device: %v (%d)", err, nbdclient.Code(err))
	}
	mm, io := s.stats(t)
	if mm[0] != 0 || mm[1] != 0 || mm[2] != 0 {
		t.Fatalf("after TRIM of everything: orig_data_size %d, compr_data_size %d, mem_used_total %d (mm_stat %v)",
			mm[0], mm[1], mm[2], mm)
	}
	if io[3] != 128<<20/4096 {
		t.Fatalf("notify_free %d, want %d", io[3], 128<<20/4096)
	}
	time.Sleep(100 * time.Millisecond)
	t.Logf("RSS fresh %d MiB, filled %d MiB (mem_used_total %d MiB), after the TRIM %d MiB",
		rss0>>20, rss1>>20, filled[2]>>20, vmRSS(s)>>20)
}
