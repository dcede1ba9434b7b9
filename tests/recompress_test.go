package tests

import (
	"bytes"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// recompData is a mixed data set from the machine: text from
// /usr/share/doc (not already compressed), binaries from /usr/bin, zero
// pages and random pages, pages kinds interleaved.
func recompData(t *testing.T, pages int) []byte {
	t.Helper()
	read := func(dir string, n int) []byte {
		var out []byte
		filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
			if err != nil || len(out) >= n {
				return filepath.SkipDir
			}
			if ext := filepath.Ext(path); !e.Type().IsRegular() || ext == ".gz" || ext == ".xz" || ext == ".bz2" {
				return nil
			}
			if b, err := os.ReadFile(path); err == nil {
				out = append(out, b[:min(len(b), n-len(out))]...)
			}
			return nil
		})
		if len(out) < n {
			t.Skipf("only %d bytes under %s", len(out), dir)
		}
		return out
	}
	text, bin := read("/usr/share/doc", pages*4096/4+4096), read("/usr/bin", pages*4096/4+4096)
	r := rand.New(rand.NewPCG(5, 6))
	data := make([]byte, pages*4096)
	for i := 0; i < pages; i++ {
		p := data[i*4096 : (i+1)*4096]
		switch i % 4 {
		case 0:
			copy(p, text[i/4*4096:])
		case 1:
			copy(p, bin[i/4*4096:])
		case 2: // zeros
		case 3:
			for j := range p {
				p[j] = byte(r.Uint32())
			}
		}
	}
	return data
}

// TestRecompressCLI: data written through NBD, then `uzram recomp-algorithm`,
// `uzram idle all` and `uzram recompress type=idle` through the control
// socket: compr_data_size drops, huge pages (random) stay, every byte reads
// back through NBD, and a second pass finds nothing left to do.
func TestRecompressCLI(t *testing.T) {
	const pages = 2048
	s := startServer(t, "--size", "8M", "--algorithm", "lz4")
	c := dial(t, s)
	data := recompData(t, pages)
	for off := 0; off < len(data); off += 256 << 10 {
		if err := c.WriteAt(data[off:off+256<<10], uint64(off)); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := s.stats(t)

	out, errOut, code := cli(t, s, "recompress", s.Name, "type=idle")
	if code == 0 || !strings.Contains(errOut, "no recompression algorithm") {
		t.Fatalf("recompress without a secondary algorithm: exit %d, %q %q", code, out, errOut)
	}
	cliOK(t, s, "recomp-algorithm", s.Name, "algo=zstd priority=1")
	cliOK(t, s, "idle", s.Name, "all")
	// --progress draws the bar it draws on a terminal: progress streams from
	// the daemon while it works, then the result goes to stdout.
	out, errOut, code = cli(t, s, "recompress", "--progress", s.Name, "type=idle")
	if code != 0 || !strings.Contains(errOut, "recompress: [") || !strings.Contains(errOut, "100%") ||
		!strings.Contains(out, "recompressed") {
		t.Fatalf("recompress --progress: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	after, _ := s.stats(t)
	// recomp_stat: incompressible, pages/bytes at priority 0..3, then run
	// totals (runs background scanned attempted recompressed ...).
	rs := strings.Fields(cliOK(t, s, "recomp-stat", s.Name))
	if len(rs) != 20 || rs[3] == "0" || rs[13] == "0" {
		t.Fatalf("recomp-stat after recompressing: %q", rs)
	}
	t.Logf("mm_stat before: %v", before)
	t.Logf("mm_stat after:  %v", after)
	// mm_stat: orig compr mem_used limit max same compacted huge huge_since
	if after[0] != before[0] || after[5] != before[5] {
		t.Fatalf("recompression changed orig_data_size or same_pages: %v -> %v", before, after)
	}
	if after[1] >= before[1]*95/100 {
		t.Fatalf("compr_data_size %d -> %d: zstd should save more than 5%%", before[1], after[1])
	}
	// Random pages stay huge; binary pages lz4 stored raw may shrink and
	// stop being huge; huge_pages_since never goes down.
	if after[7] < pages/4 || after[7] > before[7] || after[8] != before[8] {
		t.Fatalf("huge %d -> %d, since %d -> %d; %d random pages", before[7], after[7], before[8], after[8], pages/4)
	}
	got := make([]byte, 256<<10)
	for off := 0; off < len(data); off += len(got) {
		if err := c.ReadAt(got, uint64(off)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data[off:off+len(got)]) {
			t.Fatalf("data at %d differs after recompression", off)
		}
	}
	// Everything is at the highest priority or flagged incompressible now.
	cliOK(t, s, "idle", s.Name, "all")
	cliOK(t, s, "recompress", s.Name, "type=huge max_pages=10 threshold=100")
	again, _ := s.stats(t)
	if again[1] != after[1] {
		t.Fatalf("second pass changed compr_data_size %d -> %d", after[1], again[1])
	}
}

// TestAutoRecompress: with --recomp-algorithm and --auto-recompress the
// daemon recompresses idle pages by itself, within its CPU budget; the
// work shows in mm_stat and every byte reads back.
func TestAutoRecompress(t *testing.T) {
	s := startServer(t, "--size", "16M", "--recomp-algorithm", "algo=zstd priority=1",
		"--auto-recompress", "idle_age=0 interval=1 cpu=0.5 type=idle")
	c := dial(t, s)
	// Go source: lz4 halves it, zstd does better, as with real text.
	data := make([]byte, 0, 4<<20)
	files, _ := filepath.Glob(filepath.Join(runtime.GOROOT(), "src", "net", "http", "*.go"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, b[:min(len(b), cap(data)-len(data))]...)
	}
	data = data[:len(data)/4096*4096]
	if len(data) < 1<<20 {
		t.Fatalf("only %d bytes of Go source found", len(data))
	}
	if err := c.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	before, _ := s.stats(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		mm, _ := s.stats(t)
		if mm[1] < before[1]*95/100 {
			t.Logf("compr_data_size %d -> %d by the background policy", before[1], mm[1])
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("compr_data_size still %d (was %d) after 20s of auto-recompress\n%s", mm[1], before[1], s.stderr())
		}
		time.Sleep(500 * time.Millisecond)
	}
	got := make([]byte, len(data))
	if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data changed by background recompression (err %v)", err)
	}
}
