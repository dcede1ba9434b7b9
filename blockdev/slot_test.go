package blockdev

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/uzram/uzram/streams"
)

// residentPages counts the slot table's pages in memory: the Rss of its
// mapping in /proc/self/smaps, which (unlike mincore) leaves out the shared
// zero page that reads of untouched memory map.
func residentPages(t *testing.T, d *Device) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skip(err)
	}
	base := uintptr(unsafe.Pointer(&d.table.mem[0]))
	want := fmt.Sprintf("%x-%x", base, base+uintptr(len(d.table.mem)))
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = f[0] == want
			if !in && strings.HasPrefix(f[0], fmt.Sprintf("%x-", base)) {
				t.Skipf("the table's mapping %s merged with a neighbour's: %s", want, f[0])
			}
			continue
		}
		if in && strings.HasPrefix(l, "Rss:") {
			kb, err := strconv.Atoi(strings.Fields(l)[1])
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024 / pageSize
		}
	}
	t.Skipf("no mapping of exactly the table (%s) in /proc/self/smaps: merged with a neighbour", want)
	return 0
}

const pageSize = 4096

// TestTableOnDemand: a device whose table is faulted in on demand holds
// only the table pages of pages written (and reads of the rest map
// nothing); the default holds the whole table from the start.
func TestTableOnDemand(t *testing.T) {
	const size = 1 << 30 // 262144 slots, 4 MiB of table
	full := newTestDevice(t, size, "lz4")
	if got, want := residentPages(t, full), len(full.table.mem)/pageSize; got != want {
		t.Errorf("populated table: %d of %d pages resident", got, want)
	}

	d, err := New(Config{Name: "lazy", Size: size, Algorithm: "lz4", StreamMode: streams.DefaultMode, TableOnDemand: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := residentPages(t, d); got != 0 {
		t.Errorf("on-demand table: %d pages resident before any write", got)
	}
	page := bytes.Repeat([]byte("uzram table "), PageSize/12+1)[:PageSize]
	got := make([]byte, PageSize)
	// One page written at each end: two table pages (256 slots each).
	for _, off := range []uint64{0, size - PageSize} {
		if err := d.WriteAt(page, off, nil); err != nil {
			t.Fatal(err)
		}
	}
	for off := uint64(PageSize); off < 64<<20; off += 1 << 20 { // unwritten: zeros, no table page
		if err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, make([]byte, PageSize)) {
			t.Fatalf("unwritten page at %d: %v, or not zeros", off, err)
		}
	}
	if n := residentPages(t, d); n != 2 {
		t.Errorf("on-demand table after writing 2 pages far apart: %d pages resident, want 2", n)
	}
	for _, off := range []uint64{0, size - PageSize} {
		if err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, page) {
			t.Fatalf("page at %d: %v, or read back differs", off, err)
		}
	}
}
