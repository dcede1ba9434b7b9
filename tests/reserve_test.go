package tests

import (
	"regexp"
	"testing"
)

// TestFioBurstNoFailedWrites: writes at full speed (far faster than any swap
// load) are served from the store's reserve of pre-faulted memory and its
// refiller keeps up: not one write is refused for want of reserved memory.
func TestFioBurstNoFailedWrites(t *testing.T) {
	s := startServer(t, "--size", "512M")
	out := fio(t, s, "--rw=randwrite", "--bs=4k", "--size=96M", "--iodepth=64", "--numjobs=2",
		"--offset_increment=128M", "--buffer_compress_percentage=50", "--refill_buffers", "--group_reporting")
	out += fio(t, s, "--rw=write", "--bs=128k", "--size=256M", "--iodepth=16",
		"--buffer_compress_percentage=70", "--refill_buffers")
	mm, io := s.stats(t)
	if io[1] != 0 {
		t.Fatalf("io_stat failed_writes %d after a full-speed fill (mm_stat %v)", io[1], mm)
	}
	if mm[2] < 64<<20 {
		t.Fatalf("mem_used_total %d after 256M of writes: the fill did not happen", mm[2])
	}
	for _, m := range regexp.MustCompile(`WRITE: bw=[^,]*`).FindAllString(out, -1) {
		t.Log(m)
	}
}
