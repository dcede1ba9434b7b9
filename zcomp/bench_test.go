package zcomp

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// benchConfigs are what the benchmarks run: each backend's default and the
// levels worth comparing against it.
var benchConfigs = []struct {
	name  string
	level int
}{
	{"lz4", 0}, {"lz4", 1},
	{"lz4hc", 1}, {"lz4hc", 0},
	{"zstd", 1}, {"zstd", 0}, {"zstd", 6}, {"zstd", 10},
	{"deflate", 1}, {"deflate", 0}, {"deflate", 9},
}

var (
	corpusOnce sync.Once
	corpusVal  [][]byte
)

// benchCorpus is 4 KiB pages of real files, half machine code (pages spread
// over the Go tool) and half text (Go sources): the pages of the figures in
// docs/benchmarks.md.
func benchCorpus(b *testing.B) [][]byte {
	corpusOnce.Do(func() {
		bin, err := os.ReadFile(binaryFile(b))
		if err != nil {
			b.Fatal(err)
		}
		const perKind = 128
		step := (len(bin) / PageSize / perKind) * PageSize
		for off := 0; off+PageSize <= len(bin) && len(corpusVal) < perKind; off += step {
			corpusVal = append(corpusVal, bin[off:off+PageSize])
		}
		srcs, _ := filepath.Glob(filepath.Join(runtime.GOROOT(), "src", "net", "http", "*.go"))
		if len(srcs) == 0 {
			srcs, _ = filepath.Glob("*.go")
		}
		text := 0
		for _, f := range srcs {
			data, err := os.ReadFile(f)
			if err != nil {
				b.Fatal(err)
			}
			for off := 0; off+PageSize <= len(data) && text < perKind; off += PageSize {
				corpusVal = append(corpusVal, data[off:off+PageSize])
				text++
			}
		}
	})
	return corpusVal
}

func benchName(name string, level int) string {
	if level == 0 {
		return name + "/default"
	}
	return fmt.Sprintf("%s/level=%d", name, level)
}

// compressCorpus compresses every page as the device would (dst of the huge
// threshold, stored raw when it does not fit) and returns the compressed
// pages and the ratio of input to stored bytes.
func compressCorpus(b *testing.B, c Context, pages [][]byte) ([][]byte, float64) {
	var comp [][]byte
	stored := 0
	dst := make([]byte, hugeThreshold)
	for _, p := range pages {
		n, err := c.Compress(dst, p)
		switch {
		case errors.Is(err, ErrNoSpace):
			stored += PageSize
		case err != nil:
			b.Fatal(err)
		default:
			stored += n
			comp = append(comp, append([]byte(nil), dst[:n]...))
		}
	}
	return comp, float64(len(pages)*PageSize) / float64(stored)
}

func BenchmarkCompress(b *testing.B) {
	pages := benchCorpus(b)
	for _, bc := range benchConfigs {
		b.Run(benchName(bc.name, bc.level), func(b *testing.B) {
			c := newCtx(b, bc.name, Params{Level: bc.level})
			_, ratio := compressCorpus(b, c, pages)
			dst := make([]byte, hugeThreshold)
			b.SetBytes(PageSize)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if _, err := c.Compress(dst, pages[i%len(pages)]); err != nil && !errors.Is(err, ErrNoSpace) {
					b.Fatal(err)
				}
			}
			b.ReportMetric(ratio, "ratio")
		})
	}
}

func BenchmarkDecompress(b *testing.B) {
	pages := benchCorpus(b)
	for _, bc := range benchConfigs {
		b.Run(benchName(bc.name, bc.level), func(b *testing.B) {
			c := newCtx(b, bc.name, Params{Level: bc.level})
			comp, ratio := compressCorpus(b, c, pages)
			out := make([]byte, PageSize)
			b.SetBytes(PageSize)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if _, err := c.Decompress(out, comp[i%len(comp)]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(ratio, "ratio")
		})
	}
}

// BenchmarkDict measures what a dictionary costs and gains: text pages with
// a raw dictionary from the start of the same file.
func BenchmarkDict(b *testing.B) {
	pages := laterPages(b)
	dict := readDict(b)
	for _, bc := range []struct {
		name  string
		level int
	}{{"lz4", 0}, {"lz4hc", 0}, {"zstd", 1}, {"zstd", 0}, {"zstd", 6}, {"deflate", 1}, {"deflate", 0}} {
		for _, d := range [][]byte{nil, dict} {
			b.Run(fmt.Sprintf("%s/dict=%v", benchName(bc.name, bc.level), d != nil), func(b *testing.B) {
				c := newCtx(b, bc.name, Params{Level: bc.level, Dict: d})
				_, ratio := compressCorpus(b, c, pages)
				dst := make([]byte, hugeThreshold)
				b.SetBytes(PageSize)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					if _, err := c.Compress(dst, pages[i%len(pages)]); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(ratio, "ratio")
			})
		}
	}
}
