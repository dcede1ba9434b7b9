package swapsetup

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	in := `
# comment
[uzram0]
zram-size = min(ram / 2, 4096)
compression-algorithm = lz4 (zstd)
swap-priority = 100

[swap1]
size = 512
compression-algorithm = zstd(level=3) (zstd(level=9,dict=/d)) (deflate)
swap-priority = -1
mem-limit = 1G
streams = 2

[uzram2]
`
	got, err := ParseConfig(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []SwapConfig{
		{Name: "uzram0", Size: "min(ram / 2, 4096)", Algorithm: "lz4", Recomp: []string{"zstd"}, Priority: 100},
		{Name: "swap1", Size: "512", Algorithm: "zstd", AlgorithmParams: "level=3",
			Recomp: []string{"zstd level=9 dict=/d", "deflate"}, Priority: -1, MemLimit: "1G", Streams: 2},
		{Name: "uzram2", Size: DefaultSizeExpr, Priority: DefaultSwapPriority},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseConfig:\n got %+v\nwant %+v", got, want)
	}
	b, err := got[0].SizeBytes(8000)
	if err != nil || b != 4000<<20 {
		t.Fatalf("SizeBytes = %d, %v; want %d", b, err, 4000<<20)
	}
	b, err = got[2].SizeBytes(16000)
	if err != nil || b != 4096<<20 {
		t.Fatalf("default SizeBytes = %d, %v; want %d", b, err, 4096<<20)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"zram-size = 1", "line 1: \"zram-size = 1\" comes before any [uzramN] section"},
		{"[a]\n[a]", "line 2: section [a] given twice"},
		{"[a\n", "line 1: bad section"},
		{"[a]\nzram-size = ram / ", "line 2: zram-size: size expression"},
		{"[a]\nzram-size = ram()", "line 2: zram-size"},
		{"[a]\ncolour = blue", "line 2: colour: unknown key"},
		{"[a]\nswap-priority = high", "bad priority"},
		{"[a]\nmem-limit = lots", "invalid size"},
		{"[a]\nstreams = -1", "bad stream count"},
		{"[a]\njust words", "is not key = value"},
		{"[a]\ncompression-algorithm = (zstd)", "takes no parentheses"},
		{"[a]\ncompression-algorithm = lz4 (zstd", "unbalanced '('"},
		{"[a]\ncompression-algorithm = lz4 zstd)", "unbalanced ')'"},
		{"[a]\ncompression-algorithm = zstd(level)", "is not key=value"},
		{"[a]\ncompression-algorithm = a b c d e", "at most 3 recompression"},
		{"[a]\ncompression-algorithm = ", "empty"},
		{"[a]\ntransport = iscsi", "bad transport \"iscsi\": want nbd or ublk"},
	} {
		_, err := ParseConfig(strings.NewReader(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestSizeBytesNotPositive(t *testing.T) {
	c := SwapConfig{Size: "ram - ram"}
	if _, err := c.SizeBytes(1024); err == nil || !strings.Contains(err.Error(), "want more than 0") {
		t.Fatalf("a zero size: %v", err)
	}
}

// The example shipped in contrib/ must stay valid.
func TestContribConfig(t *testing.T) {
	f, err := os.Open("../contrib/uzram.conf")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfgs, err := ParseConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgs) != 1 || cfgs[0].Name != "uzram0" || cfgs[0].Algorithm != "lz4" || !reflect.DeepEqual(cfgs[0].Recomp, []string{"zstd"}) {
		t.Fatalf("contrib/uzram.conf parsed as %+v", cfgs)
	}
}
