package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/uzram/uzram/zcomp"
)

// runCmd measures every config and the host's zram on the corpus and
// prints the tables.
func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	corpus := fs.String("corpus", "", "corpus file")
	bin := fs.String("uzram", "", "uzram binary")
	binB := fs.String("uzram-b", "", "a second uzram binary, measured beside the first (before/after)")
	size := fs.String("size", "1G", "device size")
	settleFlag := fs.String("settle", "10s,120s", "when to read memory after the copy, comma-separated")
	only := fs.String("configs", "", "only these configs (comma-separated names; default all)")
	noZram := fs.Bool("no-zram", false, "skip the host's zram")
	analyzeToo := fs.Bool("analyze", true, "also analyse the corpus in-process (data and store alone)")
	fs.Parse(args)
	if *corpus == "" || *bin == "" {
		return fmt.Errorf("run: -corpus and -uzram are required")
	}
	var settle []time.Duration
	for _, f := range strings.Split(*settleFlag, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return err
		}
		settle = append(settle, d)
	}
	dir, err := os.MkdirTemp("", "uzram-realmem-run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	cfgs := configs(*bin, "")
	if *binB != "" {
		cfgs = append(cfgs, configs(*binB, "B ")...)
	}
	if *only != "" {
		var kept []config
		for _, c := range cfgs {
			for _, n := range strings.Split(*only, ",") {
				if strings.TrimSpace(n) == c.name {
					kept = append(kept, c)
				}
			}
		}
		cfgs = kept
	}
	start := time.Now()
	var wg sync.WaitGroup
	var res []*uzResult
	for _, c := range cfgs {
		r := measureUzram(c, dir, *corpus, *size, settle, &wg)
		if r.err != nil {
			logf("%s: %v", c.name, r.err)
		}
		res = append(res, r)
	}
	var zr []*zramResult
	if !*noZram {
		for _, z := range [][2]string{{"lz4", ""}, {"zstd", ""}, {"lz4", "zstd"}} {
			zr = append(zr, measureZram(*corpus, z[0], z[1], *size))
		}
	}
	logf("waiting for the last memory samples")
	wg.Wait()
	fi, err := os.Stat(*corpus)
	if err != nil {
		return err
	}
	w := os.Stdout
	fmt.Fprintf(w, "# uzram on real data, %s\n\n", start.Format("2006-01-02 15:04"))
	fmt.Fprintf(w, "- %s\n- corpus: %s, %.1f MiB (%d pages)%s\n", environment(), *corpus, float64(fi.Size())/(1<<20), fi.Size()/pageSize, manifest(*corpus))
	fmt.Fprintf(w, "- uzram: `uzram serve --size %s --no-mlock` plus each config's flags, written with `nbdcopy CORPUS nbd+unix:///uzram0?socket=...` (its defaults: 4 connections, 64 requests of 256 KiB each in flight); "+
		"zram: `dd if=CORPUS of=/dev/zram0 bs=1M oflag=direct` (zram compresses in dd's context, so dd's CPU time is zram's)\n\n", *size)
	writeResults(w, res, zr, *size)
	if *analyzeToo {
		for _, algo := range []string{"lz4", "zstd"} {
			a, err := analyze(*corpus, algo, zcomp.Params{})
			if err != nil {
				return err
			}
			a.write(w)
		}
	}
	return nil
}

// configs are the setups measured; prefix tells a second binary's apart.
func configs(bin, prefix string) []config {
	recomp := [][]string{{"idle", "uzram0", "all"}, {"recompress", "uzram0", "type=idle"}}
	return []config{
		{name: prefix + "lz4", bin: bin, flags: []string{"--algorithm", "lz4"}},
		{name: prefix + "zstd", bin: bin, flags: []string{"--algorithm", "zstd"}},
		{name: prefix + "lz4 → zstd", bin: bin, flags: []string{"--algorithm", "lz4", "--recomp-algorithm", "algo=zstd priority=1"}, after: recomp},
	}
}

func manifest(corpus string) string {
	b, err := os.ReadFile(corpus + ".txt")
	if err != nil {
		return ""
	}
	var parts []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Split(l, "\t")
		if len(f) >= 3 {
			parts = append(parts, f[0]+" "+f[2])
		}
	}
	return ": " + strings.Join(parts, ", ")
}

func environment() string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	load, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(load))
	if len(f) > 3 {
		f = f[:3]
	}
	return fmt.Sprintf("kernel %s, load average %s", strings.TrimSpace(string(kernel)), strings.Join(f, " "))
}

func mib(v uint64) string { return fmt.Sprintf("%.1f", float64(v)/(1<<20)) }

// writeResults prints one row per store: what it holds and what it costs.
func writeResults(w io.Writer, res []*uzResult, zr []*zramResult, size string) {
	var settleNames []string
	for _, r := range res {
		if len(r.samples) > len(settleNames) {
			settleNames = settleNames[:0]
			for _, s := range r.samples {
				settleNames = append(settleNames, s.at)
			}
		}
	}
	fmt.Fprintf(w, "| store | orig | compr | mem_used_total | same pages | huge pages | dedup pages |")
	for _, n := range settleNames {
		fmt.Fprintf(w, " RSS %s |", n)
	}
	fmt.Fprintf(w, " peak RSS | RSS − (mem_used + table) | all-in | CPU µs/page |\n|---|---:|---:|---:|---:|---:|---:|%s---:|---:|---:|---:|\n", strings.Repeat("---:|", len(settleNames)))
	for _, r := range res {
		if r.err != nil || r.mm == nil {
			fmt.Fprintf(w, "| uzram %s | failed: %v |\n", r.cfg.name, r.err)
			continue
		}
		pages := r.mm[0] / pageSize
		table := tableBytes(size)
		dd := "–"
		if len(r.dedup) > 0 {
			dd = fmt.Sprint(r.dedup[0])
		}
		fmt.Fprintf(w, "| uzram %s | %s | %s | %s | %d | %d | %s |", r.cfg.name, mib(r.mm[0]), mib(r.mm[1]), mib(r.mm[2]), r.mm[5], r.mm[7], dd)
		var last sample
		for _, s := range r.samples {
			fmt.Fprintf(w, " %s |", mib(s.rss))
			last = s
		}
		fixed := int64(last.rss) - int64(r.mm[2]+table)
		fmt.Fprintf(w, " %s | %.1f | %s (RSS) | %.1f |\n", mib(last.hw), float64(fixed)/(1<<20), mib(last.rss),
			float64((r.cpuCopy+r.cpuAfter).Microseconds())/float64(max(pages, 1)))
	}
	for _, z := range zr {
		name := "zram " + z.algo
		if z.recomp != "" {
			name += " → " + z.recomp
		}
		if z.mm == nil {
			fmt.Fprintf(w, "| kernel %s | %s |\n", name, z.note)
			continue
		}
		pages := z.mm[0] / pageSize
		all := z.mm[2] + z.table + z.handles
		fmt.Fprintf(w, "| kernel %s | %s | %s | %s | %d | %d | – |%s – | – | %s (+ table %s + handles %s) | %.1f |\n", name, mib(z.mm[0]), mib(z.mm[1]), mib(z.mm[2]), z.mm[5], z.mm[7],
			strings.Repeat(" – |", len(settleNames)), mib(all), mib(z.table), mib(z.handles), float64((z.cpu+z.cpuRecomp).Microseconds())/float64(max(pages, 1)))
	}
	fmt.Fprintf(w, "\nMiB. RSS is the server's VmRSS (binary file pages included) 1 s after the copy and then at each settle time; peak RSS is VmHWM. "+
		"\"RSS − (mem_used + table)\" is what the process holds beyond its store and its %s slot table, at the last sample. All-in for zram: mem_used_total plus its slot table (vmallocinfo) and zsmalloc handles (slabinfo), which mem_used_total leaves out. "+
		"CPU: the server's user+system time during the copy and any recompression, over pages stored; zram's is dd's (and the recompress write's).\n\n", mib(tableBytes(size)))
	for _, r := range res {
		if r.err == nil && r.mm != nil {
			fmt.Fprintf(w, "- uzram %s: copy %.1f s, server CPU %.2f s (+ %.2f s after), idle RSS %s MiB (anon %s), last RSS anon %s file %s\n", r.cfg.name,
				r.copyTime.Seconds(), r.cpuCopy.Seconds(), r.cpuAfter.Seconds(), mib(r.idle.rss), mib(r.idle.anon),
				mib(r.samples[len(r.samples)-1].anon), mib(r.samples[len(r.samples)-1].file))
		}
	}
	fmt.Fprintln(w)
}

// tableBytes is uzram's slot table for a device of size: 16 bytes a page.
func tableBytes(size string) uint64 {
	var n uint64
	var unit string
	fmt.Sscanf(size, "%d%s", &n, &unit)
	switch unit {
	case "G":
		n <<= 30
	case "M":
		n <<= 20
	}
	return n / pageSize * 16
}
