package zramctl

import (
	"bytes"
	"strings"
	"testing"

	"github.com/uzram/uzram/control"
)

func TestParseColumns(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want string
	}{
		{"NAME", "NAME"},
		{"name,disksize,Comp-Ratio", "NAME,DISKSIZE,COMP-RATIO"},
		{"+ZERO-PAGES,migrated", "NAME,ALGORITHM,DISKSIZE,DATA,COMPR,TOTAL,STREAMS,DEVICE,MOUNTPOINT,ZERO-PAGES,MIGRATED"},
	} {
		got, err := ParseColumns(tc.spec)
		if err != nil || strings.Join(got, ",") != tc.want {
			t.Errorf("ParseColumns(%q) = %v, %v; want %s", tc.spec, got, err, tc.want)
		}
	}
	for _, bad := range []string{"NAME,SIZE", "", "+", "NAME,,DATA"} {
		if _, err := ParseColumns(bad); err == nil || !strings.Contains(err.Error(), "unknown column") {
			t.Errorf("ParseColumns(%q) = %v, want unknown column", bad, err)
		}
	}
}

// Widths, alignment, raw escaping and COMP-RATIO, on fixed figures.
func TestWriteList(t *testing.T) {
	devs := []control.Device{
		{Name: "uzram0", Algorithm: "lz4", DiskSize: 1 << 30, Streams: 2, Node: "/dev/ublkb0", MountPoint: "[SWAP]",
			MM: control.MMStat{OrigDataSize: 3 << 20, ComprDataSize: 1 << 20, MemUsedTotal: 1536 << 10}},
		{Name: "uzram10", Algorithm: "zstd", DiskSize: 4 << 30, Streams: 16, MountPoint: "/mnt/a b"},
	}
	var b bytes.Buffer
	if err := WriteList(&b, devs, ListOptions{}); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"NAME    ALGORITHM DISKSIZE DATA COMPR TOTAL STREAMS DEVICE      MOUNTPOINT\n" +
		"uzram0  lz4             1G   3M    1M  1.5M       2 /dev/ublkb0 [SWAP]\n" +
		"uzram10 zstd            4G   0B    0B    0B      16             /mnt/a b\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	WriteList(&b, devs, ListOptions{Raw: true, NoHeadings: true, Columns: []string{"NAME", "MOUNTPOINT", "COMP-RATIO"}})
	if want := "uzram0 [SWAP] 2.0000\nuzram10 /mnt/a\\x20b 0.0000\n"; b.String() != want {
		t.Errorf("raw:\n%q\nwant:\n%q", b.String(), want)
	}
}
