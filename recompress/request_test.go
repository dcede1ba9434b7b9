package recompress

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/uzram/uzram/blockdev"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Request
	}{
		{"", Request{}},
		{"type=idle", Request{Type: blockdev.RecompressIdle}},
		{"type=huge", Request{Type: blockdev.RecompressHuge}},
		{"  type=huge_idle   threshold=3000 ", Request{Type: blockdev.RecompressHugeIdle, Threshold: 3000}},
		{"max_pages=100 algo=zstd", Request{MaxPages: 100, Algorithm: "zstd"}},
		{"priority=2 threshold=0", Request{Priority: 2}},
		{"priority=0", Request{}}, // zram: 0 means 1
		{"type=idle threshold=3631 max_pages=1 algo=lz4hc priority=3",
			Request{Type: blockdev.RecompressIdle, Threshold: 3631, MaxPages: 1, Algorithm: "lz4hc", Priority: 3}},
	} {
		got, err := Parse(c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		if again, err := Parse(Format(got)); err != nil || again != got {
			t.Errorf("Parse(Format(%+v)) = %+v, %v", got, again, err)
		}
	}
	for _, c := range []struct{ in, msg string }{
		{"type=cold", "want idle, huge or huge_idle"},
		{"type=", "not key=value"},
		{"type", "not key=value"},
		{"threshold=3632", "0..3631"},
		{"threshold=-1", "0..3631"},
		{"threshold=big", "0..3631"},
		{"max_pages=0", "positive"},
		{"max_pages=-3", "positive"},
		{"algo=brotli", "brotli"},
		{"priority=4", "1..3"},
		{"priority=x", "1..3"},
		{"type=idle type=huge", "given twice"},
		{"mode=idle", "unknown key"},
	} {
		_, err := Parse(c.in)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", c.in, err, c.msg)
		}
	}
}

func TestParseAlgorithm(t *testing.T) {
	dict := filepath.Join(t.TempDir(), "dict")
	if err := os.WriteFile(dict, []byte(strings.Repeat("uzram dictionary ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := ParseAlgorithm("algo=zstd")
	if err != nil || a.Priority != 1 || a.Name != "zstd" || a.ParamsText != "" || a.Params.Level != 0 {
		t.Fatalf("default priority: %+v, %v", a, err)
	}
	a, err = ParseAlgorithm("priority=2 algo=zstd level=7 dict=" + dict)
	if err != nil || a.Priority != 2 || a.Params.Level != 7 || len(a.Params.Dict) != 1700 || a.ParamsText != "level=7 dict="+dict {
		t.Fatalf("with params: %+v, %v", a, err)
	}
	for _, c := range []struct{ in, msg string }{
		{"priority=1", "algo= is required"},
		{"algo=zstd priority=0", "1..3"},
		{"algo=zstd priority=4", "1..3"},
		{"algo=nope", "nope"},
		{"algo=lz4 level=0x", "level"},
		{"algo=zstd level=99", "level"},
		{"algo=zstd dict=/nonexistent/dict", "dict"},
		{"algo=zstd speed=1", "unknown key"},
	} {
		_, err := ParseAlgorithm(c.in)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParseAlgorithm(%q) = %v, want an error containing %q", c.in, err, c.msg)
		}
	}
}

func TestFormatProgress(t *testing.T) {
	r := Result{Candidates: 200, Done: 104, BytesSaved: 3 << 20}
	if got, want := FormatProgress(r, 12), "recompress: [=====>    ] 52% 104/200 pages, 3M saved"; got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	r.Done = 200
	if got, want := FormatProgress(r, 6), "recompress: [====] 100% 200/200 pages, 3M saved"; got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got := FormatProgress(Result{}, 0); got != "recompress: 100% 0/0 pages, 0B saved" {
		t.Errorf("empty run: %q", got)
	}
	var b strings.Builder
	bar := NewBar(&b, false)
	bar.Update(r)
	bar.Finish(r)
	if out := b.String(); strings.Contains(out, "[") || !strings.Contains(out, "200 candidates") {
		t.Errorf("not a terminal: %q", out)
	}
	b.Reset()
	bar = NewBar(&b, true)
	bar.Update(Result{Candidates: 10, Done: 1})
	bar.Finish(r)
	if out := b.String(); !strings.HasPrefix(out, "\rrecompress: [") || !strings.Contains(out, "100%") || !strings.HasSuffix(out, "\n") {
		t.Errorf("terminal: %q", out)
	}
}
