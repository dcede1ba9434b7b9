package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

type kindResult struct {
	kind     dataKind
	jobs     []job
	targets  []*target
	kernel   *target // nil when host zram was not usable
	zramNote string
	samples  map[string]map[string][]sample // job name, target name
	mem      []memRow
	zramMem  []uint64
	// zram's table and handle cache, which mem_used_total leaves out
	zramTable, zramHandles uint64
	zramExtraNote          string
}

type memRow struct {
	target       string
	uzram, store bool
	rssIdle      uint64
	rssFill      uint64   // right after the fill
	rss          uint64   // settled (memSettle later)
	rssAnon      uint64   // of rss: private memory, not the binary's file pages
	mm           []uint64 // uzram's mm_stat
}

type report struct {
	opts       options
	stamp      string
	start, end time.Time
	env        string
	loadEnd    string
	kinds      []*kindResult
}

func environment(o options) string {
	var b strings.Builder
	cpu := "?"
	for _, l := range strings.Split(string(readFile("/proc/cpuinfo")), "\n") {
		if strings.HasPrefix(l, "model name") {
			cpu = strings.TrimSpace(l[strings.Index(l, ":")+1:])
			break
		}
	}
	kernel := strings.TrimSpace(string(readFile("/proc/sys/kernel/osrelease")))
	fmt.Fprintf(&b, "- machine: %d CPUs (%s), kernel %s, load average at start %s\n", runtime.NumCPU(), cpu, kernel, loadavg())
	fmt.Fprintf(&b, "- uzram: %s; %s; %s; %s\n", cmdOut(o.repo, "git", "describe", "--always", "--dirty"),
		cmdOut("", "fio", "--version"), cmdOut("", "nbdkit", "--version"), runtime.Version())
	return b.String()
}

func cmdOut(dir, name string, args ...string) string {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	b, err := cmd.Output()
	if err != nil {
		return name + " ?"
	}
	return strings.TrimSpace(string(b))
}

func loadavg() string {
	f := strings.Fields(string(readFile("/proc/loadavg")))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func fmtIOPS(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 100e3:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 10e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.2fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func mib(v uint64) string { return fmt.Sprintf("%.1f", float64(v)/(1<<20)) }

// stat is the median with the range of one metric over a target's runs.
type stat struct{ med, min, max float64 }

func summarize(ss []sample, f func(sample) float64) stat {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return stat{}
	}
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return stat{med, v[0], v[len(v)-1]}
}

func iops(s sample) float64 { return s.iops }
func p50(s sample) float64  { return s.p50 }
func p99(s sample) float64  { return s.p99 }

func (kr *kindResult) byName(name string) *target {
	for _, t := range kr.targets {
		if t.name == name {
			return t
		}
	}
	return nil
}

func (r *report) write(mdPath string) error {
	var b strings.Builder
	mode := "full"
	if r.opts.quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "# uzram benchmark, %s (%s)\n\n", r.start.Format("2006-01-02 15:04"), mode)
	b.WriteString(r.env)
	fmt.Fprintf(&b, "- load average at end %s; took %s\n", r.loadEnd, r.end.Sub(r.start).Round(time.Second))
	fmt.Fprintf(&b, "- fio 4 KiB/128 KiB jobs over `ioengine=nbd` on unix sockets; %d interleaved runs per job and target "+
		"(A B C A B C ...), %d s each after %d s ramp; median (min–max). %s devices, the first %s filled with "+
		"the data kind before any job; jobs stay in that %s.\n", r.opts.runs, r.opts.runtime, r.opts.ramp, deviceName, fillName, fillName)
	b.WriteString("- Shared, noisy machine: compare targets within this run, not with other runs.\n\n")

	for i, kr := range r.kinds {
		if len(kr.jobs) > 0 {
			r.writeKind(&b, kr, i)
		}
	}
	r.writeMemory(&b)
	b.WriteString("Reproduce: `" + r.opts.command() + "`\n")

	if err := os.WriteFile(mdPath, []byte(b.String()), 0o644); err != nil {
		return err
	}
	if err := r.writeTSV(strings.TrimSuffix(mdPath, ".md") + ".tsv"); err != nil {
		return err
	}
	fmt.Print(b.String())
	logf("wrote %s", mdPath)
	return nil
}

func (r *report) chartName(i int) string {
	return fmt.Sprintf("bench-%s-%d.png", r.stamp, i)
}

func (r *report) writeKind(b *strings.Builder, kr *kindResult, i int) {
	fmt.Fprintf(b, "## %s data\n\n", kr.kind.name)
	kr.writeTable(b, "IOPS", func(ss []sample) string {
		s := summarize(ss, iops)
		return fmt.Sprintf("%s (%s–%s)", fmtIOPS(s.med), fmtIOPS(s.min), fmtIOPS(s.max))
	})
	b.WriteString("\n")
	kr.writeTable(b, "Latency p50 / p99, µs (reads for randrw; median over runs)", func(ss []sample) string {
		return fmt.Sprintf("%.0f / %.0f", summarize(ss, p50).med, summarize(ss, p99).med)
	})
	kr.writeRatios(b)
	if kr.kernel != nil {
		fmt.Fprintf(b, "\n### Reference: host kernel zram lz4 (fio libaio direct on %s; no socket, no process switch: the ceiling, not a peer)\n\n", zramDev)
		b.WriteString("| job | IOPS | p50 µs | p99 µs |\n|---|---:|---:|---:|\n")
		for _, j := range kr.jobs {
			ss := kr.samples[j.name][kr.kernel.name]
			s := summarize(ss, iops)
			fmt.Fprintf(b, "| %s | %s (%s–%s) | %.0f | %.0f |\n", j.name, fmtIOPS(s.med), fmtIOPS(s.min), fmtIOPS(s.max),
				summarize(ss, p50).med, summarize(ss, p99).med)
		}
	} else {
		fmt.Fprintf(b, "\nHost kernel zram: %s\n", kr.zramNote)
	}

	png := r.chartName(i)
	if err := r.chart(kr, filepath.Join(r.opts.out, png)); err != nil {
		fmt.Fprintf(b, "\n(chart failed: %v)\n\n", err)
	} else {
		fmt.Fprintf(b, "\n![IOPS by job and target, %s data](%s)\n\n", kr.kind.name, png)
	}
}

// writeTable writes a table of a job per row and a target per column, each
// cell made from the samples of that job on that target.
func (kr *kindResult) writeTable(b *strings.Builder, title string, cell func([]sample) string) {
	fmt.Fprintf(b, "### %s\n\n| job |", title)
	for _, t := range kr.targets {
		fmt.Fprintf(b, " %s |", t.name)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(kr.targets)) + "\n")
	for _, j := range kr.jobs {
		fmt.Fprintf(b, "| %s |", j.name)
		for _, t := range kr.targets {
			fmt.Fprintf(b, " %s |", cell(kr.samples[j.name][t.name]))
		}
		b.WriteString("\n")
	}
}

// writeRatios writes each uzram target's figures over its peers'.
func (kr *kindResult) writeRatios(b *strings.Builder) {
	// Ratios of median IOPS: against the transport ceiling and the
	// compressed-RAM peer, the two comparisons README's Performance makes;
	// a narrowed run (--targets) gets the columns of the peers it has.
	var uz []*target
	for _, t := range kr.targets {
		if t.uzram {
			uz = append(uz, t)
		}
	}
	type col struct {
		label string
		peer  *target
		f     func(sample) float64
		fmt   string
	}
	var cols []col
	if t := kr.byName("nbdkit null"); t != nil {
		cols = append(cols, col{"÷ null", t, iops, " %.2fx |"})
	}
	if t := kr.byName("nbdkit memory zstd"); t != nil {
		cols = append(cols, col{"÷ mem zstd", t, iops, " %.1fx |"})
	}
	if t := kr.byName("nbdkit null"); t != nil {
		cols = append(cols, col{"p50 ÷ null", t, p50, " %.2f |"})
	}
	if a, bt := kr.byName("uzram lz4 percpu"), kr.byName("uzramB lz4 percpu"); a != nil && bt != nil {
		cols = append(cols, col{"÷ uzramB", bt, iops, " %.2fx |"}, col{"p50 ÷ uzramB", bt, p50, " %.2f |"})
	}
	if len(cols) > 0 && len(uz) > 0 {
		b.WriteString("\n### uzram ÷ peers (median IOPS; p50 ratio: lower is better)\n\n| job |")
		for _, t := range uz {
			for i, c := range cols {
				if i == 0 {
					fmt.Fprintf(b, " %s %s |", t.short, c.label)
				} else {
					fmt.Fprintf(b, " %s |", c.label)
				}
			}
		}
		b.WriteString("\n|---|" + strings.Repeat("---:|", len(cols)*len(uz)) + "\n")
		for _, j := range kr.jobs {
			fmt.Fprintf(b, "| %s |", j.name)
			for _, t := range uz {
				u := kr.samples[j.name][t.name]
				for _, c := range cols {
					fmt.Fprintf(b, c.fmt, summarize(u, c.f).med/summarize(kr.samples[j.name][c.peer.name], c.f).med)
				}
			}
			b.WriteString("\n")
		}
	}
}

func (r *report) writeMemory(b *strings.Builder) {
	fmt.Fprintf(b, "## Memory after a %s fill (fresh server per data kind)\n\n", fillName)
	fmt.Fprintf(b, "Stored = the %s written. RSS is VmRSS of the server process right after the fill and %s later (settled, when mm_stat is read too); "+
		"anon is the settled RSS without the binary's file pages (RssAnon). uzram's slot table is in its RSS (16 bytes per page of the %s device). mm_stat fields are uzram's (zram's meanings). MiB.\n\n", fillName, memSettle, deviceName)
	b.WriteString("| data | target | RSS idle | RSS after fill | RSS settled | anon | orig_data_size | compr_data_size | mem_used_total | stored ÷ RSS | stored ÷ anon | RSS ÷ compr |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	stored := float64(fillBytes)
	for _, kr := range r.kinds {
		for _, m := range kr.mem {
			orig, compr, used, perRSS, perAnon, overCompr := "–", "–", "–", "–", "–", "–"
			if m.mm != nil {
				orig, compr, used = mib(m.mm[0]), mib(m.mm[1]), mib(m.mm[2])
				if m.mm[1] > 0 {
					overCompr = fmt.Sprintf("%.2f", float64(m.rss)/float64(m.mm[1]))
				}
			}
			if m.store {
				perRSS = fmt.Sprintf("%.2f", stored/float64(m.rss))
				perAnon = fmt.Sprintf("%.2f", stored/float64(m.rssAnon))
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", kr.kind.name, m.target,
				mib(m.rssIdle), mib(m.rssFill), mib(m.rss), mib(m.rssAnon), orig, compr, used, perRSS, perAnon, overCompr)
		}
	}
	b.WriteString("\nReference: host kernel zram lz4, same fill through libaio on " + zramDev +
		" (its memory is kernel memory; no process RSS). mem_used_total is zsmalloc's pages only; zram also holds its slot table" +
		" (vmalloc, /proc/vmallocinfo) and a zsmalloc handle per object (/proc/slabinfo zs_handle-zram0), counted in \"with table\"" +
		" (its zspage records sit in a merged slab cache and are left out, in zram's favour).\n\n")
	b.WriteString("| data | orig_data_size | compr_data_size | mem_used_total | table | handles | with table | stored ÷ mem_used_total | stored ÷ with table |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, kr := range r.kinds {
		if kr.zramMem == nil {
			fmt.Fprintf(b, "| %s | %s | | | | | | | |\n", kr.kind.name, kr.zramNote)
			continue
		}
		per, perAll, table, handles, all := "–", "–", "–", "–", "–"
		if kr.zramMem[2] > 0 {
			per = fmt.Sprintf("%.2f", stored/float64(kr.zramMem[2]))
		}
		if kr.zramExtraNote == "" {
			tot := kr.zramMem[2] + kr.zramTable + kr.zramHandles
			table, handles, all = mib(kr.zramTable), mib(kr.zramHandles), mib(tot)
			perAll = fmt.Sprintf("%.2f", stored/float64(tot))
		} else {
			table = kr.zramExtraNote
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", kr.kind.name, mib(kr.zramMem[0]), mib(kr.zramMem[1]), mib(kr.zramMem[2]),
			table, handles, all, per, perAll)
	}
	b.WriteString("\n")
}

// chart draws median IOPS per job, one bar per target, on a log axis: the
// peers differ by 20x on random writes, which a linear axis would flatten.
func (r *report) chart(kr *kindResult, png string) error {
	all := kr.targets
	if kr.kernel != nil {
		all = append(append([]*target{}, kr.targets...), kr.kernel)
	}
	var d strings.Builder
	d.WriteString("job")
	for _, t := range all {
		fmt.Fprintf(&d, "\t%q", t.name)
	}
	d.WriteString("\n")
	for _, j := range kr.jobs {
		fmt.Fprintf(&d, "%q", j.name)
		for _, t := range all {
			fmt.Fprintf(&d, "\t%.0f", summarize(kr.samples[j.name][t.name], iops).med)
		}
		d.WriteString("\n")
	}
	dat := strings.TrimSuffix(png, ".png") + ".dat"
	if err := os.WriteFile(dat, []byte(d.String()), 0o644); err != nil {
		return err
	}
	width := max(900, 200+150*len(kr.jobs))
	script := fmt.Sprintf(`set terminal pngcairo size %d,600 font ",10"
set output %q
set title "IOPS, %s data, median of %d (fio nbd engine; kernel zram: libaio)"
set datafile separator "\t"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set yrange [1000:*]
set ylabel "IOPS (log)"
set grid ytics
set key outside top center horizontal maxrows 2
set xtics rotate by -25 scale 0
set bmargin 6
plot for [c=2:%d] %q using c:xtic(1) title columnheader(c)
`, width, png, kr.kind.name, r.opts.runs, len(all)+1, dat)
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %v: %s", err, out)
	}
	return nil
}

// writeTSV keeps every run's numbers, for anyone who wants more than medians.
func (r *report) writeTSV(path string) error {
	var b strings.Builder
	b.WriteString("data\tjob\ttarget\trun\tiops\tp50_us\tp99_us\n")
	for _, kr := range r.kinds {
		all := kr.targets
		if kr.kernel != nil {
			all = append(append([]*target{}, kr.targets...), kr.kernel)
		}
		for _, j := range kr.jobs {
			for _, t := range all {
				for i, s := range kr.samples[j.name][t.name] {
					fmt.Fprintf(&b, "%s\t%s\t%s\t%d\t%.0f\t%.1f\t%.1f\n", kr.kind.name, j.name, t.name, i+1, s.iops, s.p50, s.p99)
				}
			}
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// command is the hack/bench.sh line that repeats this run (without the
// flags bench.sh adds itself).
func (o options) command() string {
	c := "hack/bench.sh"
	if o.quick {
		c += " --quick"
	}
	if o.runs != 3 {
		c += fmt.Sprintf(" --runs %d", o.runs)
	}
	if o.targets != "" {
		c += fmt.Sprintf(" --targets %q", o.targets)
	}
	if o.jobs != "" {
		c += fmt.Sprintf(" --jobs %q", o.jobs)
	}
	if o.binB != "" {
		c += " --uzram-b BIN"
	}
	if o.fill != "1G" {
		c += " --fill " + o.fill
	}
	if o.memOnly {
		c += " --memory-only"
	}
	return c
}
