package zcomp

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/dict"
)

// dictSize is small on purpose: deflate re-reads its dictionary per page.
const dictSize = 16 << 10

// readDict is raw dictionary content: the start of the text file. The pages
// it is tested on come from later in the same file, so they share its
// vocabulary without repeating it.
func readDict(tb testing.TB) []byte {
	b, err := os.ReadFile(textFile())
	if err != nil {
		tb.Fatal(err)
	}
	if len(b) < dictSize+8*PageSize {
		tb.Skipf("%s too short for dictionary tests", textFile())
	}
	return b[:dictSize]
}

// laterPages are pages of the text file that the dictionary does not hold.
func laterPages(tb testing.TB) [][]byte {
	b, err := os.ReadFile(textFile())
	if err != nil {
		tb.Fatal(err)
	}
	var pages [][]byte
	for off := dictSize + PageSize; off+PageSize <= len(b) && len(pages) < 8; off += 2 * PageSize {
		pages = append(pages, b[off:off+PageSize])
	}
	return pages
}

// trainedZstdDict is a dictionary in zstd's trained format (magic, entropy
// tables, content), trained as one would: on pages of sibling files, here the
// rest of net/http, and used on the text file's pages.
func trainedZstdDict(tb testing.TB) []byte {
	files, _ := filepath.Glob(filepath.Join(filepath.Dir(textFile()), "*.go"))
	var samples [][]byte
	for _, f := range files {
		if f == textFile() {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		for off := 0; off+PageSize <= len(b) && len(samples) < 64; off += PageSize {
			samples = append(samples, b[off:off+PageSize])
		}
	}
	if len(samples) < 32 {
		tb.Skipf("too few sibling files of %s to train a dictionary", textFile())
	}
	d, err := dict.BuildZstdDict(samples, dict.Options{MaxDictSize: dictSize, HashBytes: 6, ZstdDictID: 42})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func TestDictionary(t *testing.T) {
	raw := readDict(t)
	pages := laterPages(t)
	cases := []struct {
		name string
		dict []byte
	}{
		{"zstd", raw},
		{"zstd", trainedZstdDict(t)},
		{"deflate", raw},
		{"lz4", raw},
		{"lz4hc", raw},
	}
	for _, tc := range cases {
		for _, level := range testLevels[tc.name] {
			if tc.name == "zstd" && level >= 10 {
				continue // refused, see TestDictionaryZstdBestRejected
			}
			if tc.name == "lz4" && level > 8 {
				continue // probes too few positions to find the dictionary
			}
			plain := newCtx(t, tc.name, Params{Level: level})
			withDict := newCtx(t, tc.name, Params{Level: level, Dict: tc.dict})
			var plainTotal, dictTotal int
			for i, page := range pages {
				comp := make([]byte, 2*PageSize)
				n, err := plain.Compress(comp, page)
				if err != nil {
					t.Fatal(err)
				}
				plainTotal += n
				n, err = withDict.Compress(comp, page)
				if err != nil {
					t.Fatal(err)
				}
				dictTotal += n
				out := make([]byte, PageSize)
				m, err := withDict.Decompress(out, comp[:n])
				if err != nil || !bytes.Equal(out[:m], page) {
					t.Fatalf("%s level %d page %d: dictionary round trip failed: %v", tc.name, level, i, err)
				}
				// Without the dictionary the page must not come back intact.
				if m, err := plain.Decompress(out, comp[:n]); err == nil && bytes.Equal(out[:m], page) {
					t.Errorf("%s level %d page %d: decoded without its dictionary", tc.name, level, i)
				}
			}
			t.Logf("%s level %d (dict %d bytes): %d pages, %d bytes plain, %d with dictionary",
				tc.name, level, len(tc.dict), len(pages), plainTotal, dictTotal)
			if dictTotal >= plainTotal*95/100 {
				t.Errorf("%s level %d: dictionary saved too little: %d -> %d bytes", tc.name, level, plainTotal, dictTotal)
			}
		}
	}
}

func TestDictionaryBadTrained(t *testing.T) {
	// The zstd magic followed by junk is a broken trained dictionary, not raw
	// content: it must fail at setup, not on the first page.
	bad := append([]byte{0x37, 0xA4, 0x30, 0xEC}, bytes.Repeat([]byte{1}, 64)...)
	b, _ := Lookup("zstd")
	c, err := b.NewContext(Params{Dict: bad})
	if err == nil {
		c.Close()
		t.Fatal("zstd accepted a corrupt trained dictionary")
	}
	if !strings.HasPrefix(err.Error(), "zcomp: zstd: ") || errors.Is(err, ErrCorrupt) {
		t.Errorf("unexpected error shape: %v", err)
	}
}

func TestDictionaryZstdBestRejected(t *testing.T) {
	b, _ := Lookup("zstd")
	for _, level := range []int{10, 22} {
		c, err := b.NewContext(Params{Level: level, Dict: readDict(t)})
		if err == nil {
			c.Close()
			t.Fatalf("zstd level %d accepted a dictionary", level)
		}
		if !strings.Contains(err.Error(), "use level 1..9 with a dictionary") {
			t.Errorf("unclear error: %v", err)
		}
	}
}
