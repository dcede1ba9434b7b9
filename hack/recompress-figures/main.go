// Command recompress-figures measures recompression on a mixed data set
// built from files on the machine, for the recompression issue's closing
// note: mm_stat before and after `idle all` + `recompress type=idle` with lz4
// primary and zstd at priority 1, the same with a zstd dictionary trained on
// the data, bytes saved and CPU seconds, and the same data on the host
// kernel's zram (lz4) for comparison.
//
//	go run ./hack/recompress-figures [-size 256] [-kernel=false]
//
// The data set is pages in runs of 16 of one kind: text (/usr/share/doc,
// /usr/include, Python sources; compressed files left out), binaries
// (/usr/bin, /usr/lib/x86_64-linux-gnu), zero pages and random pages, in
// the proportions of -mix. The kernel comparison needs root and an unused
// /dev/zram0 (disksize 0); it resets the device before and after.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/dict"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/recompress"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

const page = blockdev.PageSize

func main() {
	sizeMiB := flag.Int("size", 256, "data set size in MiB")
	mix := flag.String("mix", "35,35,15,15", "percent of text, binary, zero and random pages")
	kernel := flag.Bool("kernel", true, "also measure the host kernel's zram (lz4) on /dev/zram0")
	dictKiB := flag.Int("dict", 64, "size of the trained zstd dictionary in KiB")
	flag.Parse()
	if err := run(*sizeMiB, *mix, *kernel, *dictKiB); err != nil {
		fmt.Fprintln(os.Stderr, "recompress-figures:", err)
		os.Exit(1)
	}
}

func run(sizeMiB int, mix string, kernel bool, dictKiB int) error {
	data, err := dataset(sizeMiB<<20, mix)
	if err != nil {
		return err
	}
	fmt.Printf("data set: %d MiB (%d pages), mix text,binary,zero,random = %s %%; %s, GOMAXPROCS %d\n\n",
		sizeMiB, len(data)/page, mix, runtime.Version(), runtime.GOMAXPROCS(0))

	dictPath, err := trainDict(data, dictKiB<<10)
	if err != nil {
		return err
	}
	defer os.Remove(dictPath)

	fmt.Println("| configuration | mm_stat (orig compr mem_used limit max same compacted huge huge_since) | ratio orig/compr | ratio orig/mem_used |")
	fmt.Println("|---|---|---|---|")
	var results []string
	for _, c := range []struct{ name, secondary string }{
		{"lz4 + zstd (priority 1)", "algo=zstd priority=1"},
		{fmt.Sprintf("lz4 + zstd with a %d KiB trained dictionary", dictKiB), "algo=zstd priority=1 dict=" + dictPath},
	} {
		line, err := measure(data, c.name, c.secondary)
		if err != nil {
			return err
		}
		results = append(results, line)
	}
	if kernel {
		if err := kernelZram(data); err != nil {
			fmt.Printf("| kernel zram lz4 | not measured: %v | | |\n", err)
		}
	}
	fmt.Println()
	fmt.Println("| configuration | pages recompressed | incompressible | compr bytes saved | mem_used saved (after compaction) | CPU s | wall s |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, l := range results {
		fmt.Println(l)
	}
	return nil
}

// measure writes data to a fresh lz4 device, sets the secondary algorithm,
// marks everything idle and recompresses type=idle; it prints the mm_stat
// rows and returns the summary row.
func measure(data []byte, name, secondary string) (string, error) {
	d, err := blockdev.New(blockdev.Config{Name: "figures", Size: int64(len(data)), Algorithm: "lz4", StreamMode: streams.DefaultMode})
	if err != nil {
		return "", err
	}
	defer d.Close()
	for off := 0; off < len(data); off += page {
		if err := d.WriteAt(data[off:off+page], uint64(off), nil); err != nil {
			return "", err
		}
	}
	d.Compact()
	before := d.Stats()
	row(name+": lz4, written", before)
	a, err := recompress.ParseAlgorithm(secondary)
	if err != nil {
		return "", err
	}
	if err := a.Apply(d); err != nil {
		return "", err
	}
	d.MarkIdle(0)
	res, err := d.Recompress(context.Background(), recompress.Request{Type: blockdev.RecompressIdle}, nil)
	if err != nil {
		return "", err
	}
	after := d.Stats()
	row(name+": after idle all + recompress type=idle", after)
	d.Compact()
	compacted := d.Stats()
	row(name+": then compact", compacted)
	return fmt.Sprintf("| %s | %d | %d | %s | %s | %.2f | %.2f |", name, res.Recompressed, res.Incompressible,
		mib(res.BytesSaved), mib(before.MemUsedTotal-compacted.MemUsedTotal), res.CPU.Seconds(), res.Elapsed.Seconds()), nil
}

func row(name string, s blockdev.Stats) {
	fmt.Printf("| %s | `%s` | %.3f | %.3f |\n", name, strings.Join(strings.Fields(s.MMStat()), " "),
		float64(s.OrigDataSize)/float64(s.ComprDataSize), float64(s.OrigDataSize)/float64(s.MemUsedTotal))
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// kernelZram writes data to the host's /dev/zram0 (lz4) and prints its
// mm_stat, then resets the device.
func kernelZram(data []byte) error {
	const sys = "/sys/block/zram0/"
	ds, err := os.ReadFile(sys + "disksize")
	if err != nil {
		return fmt.Errorf("no zram0: %w", err)
	}
	if strings.TrimSpace(string(ds)) != "0" {
		return errors.New("/dev/zram0 is in use (disksize is not 0); not touching it")
	}
	set := func(file, v string) error {
		if err := os.WriteFile(sys+file, []byte(v), 0); err != nil {
			return fmt.Errorf("write %s: %w", file, err)
		}
		return nil
	}
	if err := set("reset", "1"); err != nil {
		return err
	}
	defer set("reset", "1")
	if err := set("comp_algorithm", "lz4"); err != nil {
		return err
	}
	if err := set("disksize", strconv.Itoa(len(data))); err != nil {
		return err
	}
	f, err := os.OpenFile("/dev/zram0", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write /dev/zram0: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	f.Close()
	mm, err := os.ReadFile(sys + "mm_stat")
	if err != nil {
		return err
	}
	var v []int64
	for _, s := range strings.Fields(string(mm)) {
		n, _ := strconv.ParseInt(s, 10, 64)
		v = append(v, n)
	}
	if len(v) < 3 {
		return fmt.Errorf("mm_stat %q", mm)
	}
	fmt.Printf("| kernel zram lz4 (%s) | `%s` | %.3f | %.3f |\n", kernelRelease(), strings.Join(strings.Fields(string(mm)), " "),
		float64(v[0])/float64(v[1]), float64(v[0])/float64(v[2]))
	return nil
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// dataset builds n bytes of pages in runs of 16 of one kind, in mix's
// proportions, from files on the machine; the same machine gives the same
// data.
func dataset(n int, mix string) ([]byte, error) {
	var pct [4]int
	parts := strings.Split(mix, ",")
	if len(parts) != 4 {
		return nil, fmt.Errorf("-mix %q: want four percentages", mix)
	}
	sum := 0
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("-mix %q: %q is not a percentage", mix, p)
		}
		pct[i], sum = v, sum+v
	}
	if sum != 100 {
		return nil, fmt.Errorf("-mix %q adds up to %d, not 100", mix, sum)
	}
	text, err := files(n*pct[0]/100+page, []string{"/usr/share/doc", "/usr/include", "/usr/lib/python3"},
		func(p string) bool {
			switch filepath.Ext(p) {
			case ".gz", ".xz", ".bz2", ".zst", ".zip", ".pyc", ".so":
				return false
			}
			return true
		})
	if err != nil {
		return nil, err
	}
	bin, err := files(n*pct[1]/100+page, []string{"/usr/bin", "/usr/lib/x86_64-linux-gnu"}, func(string) bool { return true })
	if err != nil {
		return nil, err
	}
	out := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	const run = 16
	var used [4]int // pages of each kind placed
	var src [2][]byte
	src[0], src[1] = text, bin
	for pg := 0; pg < n/page; pg += run {
		// The kind furthest behind its share goes next.
		k, worst := 0, math.Inf(1)
		for i := range pct {
			if pct[i] == 0 {
				continue
			}
			if f := float64(used[i]) / float64(pct[i]); f < worst {
				k, worst = i, f
			}
		}
		for j := pg; j < min(pg+run, n/page); j++ {
			p := out[j*page : (j+1)*page]
			switch k {
			case 0, 1:
				off := used[k] * page
				if off+page > len(src[k]) {
					off %= len(src[k]) - page
				}
				copy(p, src[k][off:])
			case 3:
				for i := range p {
					p[i] = byte(r.Uint32())
				}
			}
			used[k]++
		}
	}
	return out, nil
}

// files concatenates regular files under dirs, in walk order, up to n bytes.
func files(n int, dirs []string, keep func(string) bool) ([]byte, error) {
	var out []byte
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
			if err != nil || len(out) >= n {
				return filepath.SkipDir
			}
			if !e.Type().IsRegular() || !keep(path) {
				return nil
			}
			if b, err := os.ReadFile(path); err == nil {
				out = append(out, b[:min(len(b), n-len(out))]...)
			}
			return nil
		})
	}
	if len(out) < 2*page {
		return nil, fmt.Errorf("found only %d bytes under %v", len(out), dirs)
	}
	return out, nil
}

// trainDict builds a zstd dictionary from a sample of the data set's
// compressible pages (every 64th page, if lz4 compresses it) and
// writes it to a temporary file for dict=PATH.
func trainDict(data []byte, size int) (string, error) {
	backend, err := zcomp.Lookup("lz4")
	if err != nil {
		return "", err
	}
	ctx, err := backend.NewContext(zcomp.Params{})
	if err != nil {
		return "", err
	}
	defer ctx.Close()
	var samples [][]byte
	dst := make([]byte, blockdev.HugeThreshold)
	for off := 0; off+page <= len(data); off += 64 * page {
		p := data[off : off+page]
		if _, err := ctx.Compress(dst, p); err == nil && !zeroPage(p) {
			samples = append(samples, p)
		}
	}
	start := time.Now()
	d, err := dict.BuildZstdDict(samples, dict.Options{MaxDictSize: size, HashBytes: 6, ZstdDictID: 1})
	if err != nil {
		return "", fmt.Errorf("train dictionary: %w", err)
	}
	fmt.Printf("dictionary: %d bytes trained on %d sample pages in %.1fs\n", len(d), len(samples), time.Since(start).Seconds())
	f, err := os.CreateTemp("", "uzram-dict-")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Write(d); err != nil {
		return "", err
	}
	return f.Name(), nil
}

func zeroPage(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
