// Command bench measures uzram against the servers a user would otherwise
// pick, side by side in one run: nbdkit null (what the NBD socket alone
// costs), nbdkit memory sparse (uncompressed RAM) and nbdkit memory zstd
// (compressed RAM), all through fio's nbd engine on unix sockets, with the
// host's kernel zram (libaio on /dev/zram0) as a reference printed apart.
//
// The machine it runs on is shared and noisy, so targets are interleaved run
// by run (A B C A B C ...) and only ratios within one run mean much. Every
// data kind gets fresh servers and a 1 GiB fill first (--fill); the fill is
// also when memory is measured. hack/bench.sh builds and runs it; see --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type options struct {
	quick, goOnly, noZram bool
	memOnly               bool
	fill                  string
	bin, repo, out        string
	runs, runtime, ramp   int
	goPkgs, goBenchtime   string
	// Narrowing a run (profiling, before/after comparisons): which targets
	// and jobs, and a second uzram binary measured beside the first.
	targets, jobs, binB string
}

// memSettle is how long after the fills the servers' memory is read: uzram
// gives a closed connection's buffers back at its next heap poll (5 s)
// where store memory held still.
const memSettle = 12 * time.Second

func main() {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "spine figures only: QD32 x2 randread/randwrite and QD1 latency on 50% data")
	flag.BoolVar(&o.goOnly, "go", false, "run only the Go hot-path benchmarks (-benchmem) into the results file")
	flag.BoolVar(&o.noZram, "no-zram", false, "skip the host kernel zram reference")
	flag.BoolVar(&o.memOnly, "memory-only", false, "fill and measure memory, run no fio jobs (50% data; all kinds without --quick)")
	flag.StringVar(&o.fill, "fill", "1G", "bytes written before the jobs (devices are twice this): 512M, 1G, 4G...")
	flag.StringVar(&o.bin, "uzram", "", "uzram binary (required unless --go)")
	flag.StringVar(&o.repo, "repo", ".", "uzram module root, for --go and the version line")
	flag.StringVar(&o.out, "out", "results", "results folder")
	flag.IntVar(&o.runs, "runs", 3, "interleaved runs per job and target")
	flag.IntVar(&o.runtime, "runtime", 0, "seconds per fio run (default 2 with --quick, else 3)")
	flag.IntVar(&o.ramp, "ramp", 1, "fio ramp seconds per run")
	flag.StringVar(&o.goPkgs, "go-pkgs", "./blockdev ./blockdev/nbd ./zcomp ./streams ./pagestore", "packages for --go")
	flag.StringVar(&o.goBenchtime, "go-benchtime", "1s", "-benchtime for --go")
	flag.StringVar(&o.targets, "targets", "", "only these targets, comma-separated: uzram-lz4-percpu, uzram-lz4-pool, uzram-zstd-percpu, uzramB-lz4-percpu, nbdkit-null, nbdkit-sparse, nbdkit-zstd (default all)")
	flag.StringVar(&o.jobs, "jobs", "", "only jobs whose name contains one of these, comma-separated, e.g. \"randwrite QD32,randread QD1\"")
	flag.StringVar(&o.binB, "uzram-b", "", "a second uzram binary, run as 'uzramB lz4 percpu' beside the first (before/after in one run)")
	flag.StringVar(&zram.marker, "zram-marker", "", "file holding our PID while /dev/zram0 is ours (for bench.sh's trap)")
	flag.Parse()
	if o.runtime == 0 {
		o.runtime = 3
		if o.quick {
			o.runtime = 2
		}
	}

	if err := setFill(o.fill); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, o)
	cancel()
	// Whatever happened, leave no server running and /dev/zram0 as we found it.
	stopAll()
	zramReset()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	stamp := time.Now().Format("20060102-150405")
	mdPath := filepath.Join(o.out, "bench-"+stamp+".md")
	if o.goOnly {
		return goBench(ctx, o, mdPath)
	}
	if o.bin == "" {
		return errors.New("--uzram BINARY is required")
	}
	tmp, err := os.MkdirTemp("", "uzram-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	rep := &report{opts: o, stamp: stamp, start: time.Now(), env: environment(o)}
	type step struct {
		kind dataKind
		jobs []job
	}
	plan := []step{{half, quickJobs()}}
	if !o.quick {
		// QD1 latency barely depends on the data, and the time budget is
		// tight, so the other kinds get the throughput jobs only.
		plan = []step{{half, allJobs()}, {random, throughputJobs()}, {zeros, throughputJobs()}}
	}
	if o.jobs != "" {
		var kept []step
		for _, p := range plan {
			if p.jobs = pickJobs(p.jobs, o.jobs); len(p.jobs) > 0 {
				kept = append(kept, p)
			}
		}
		if len(kept) == 0 {
			return fmt.Errorf("--jobs %q matches no job", o.jobs)
		}
		plan = kept
	}
	if o.memOnly {
		for i := range plan {
			plan[i].jobs = nil
		}
	}
	f := fio{runtime: o.runtime, ramp: o.ramp, tmp: tmp}
	for _, p := range plan {
		kr, err := runKind(ctx, o, f, tmp, p.kind, p.jobs)
		if kr != nil {
			rep.kinds = append(rep.kinds, kr)
		}
		if err != nil {
			return err
		}
	}
	rep.end = time.Now()
	rep.loadEnd = loadavg()
	return rep.write(mdPath)
}

// runKind starts fresh servers, fills them with d (measuring memory), then
// runs every job on every target, interleaved run by run.
func runKind(ctx context.Context, o options, f fio, tmp string, d dataKind, jobs []job) (*kindResult, error) {
	kr := &kindResult{kind: d, jobs: jobs, samples: map[string]map[string][]sample{}}
	defer stopAll()
	defer zramReset()
	kr.targets = pickTargets(serverTargets(o.bin, o.binB, tmp), o.targets)
	if len(kr.targets) == 0 {
		return nil, fmt.Errorf("--targets %q matches no target", o.targets)
	}
	for _, t := range kr.targets {
		if err := t.start(tmp); err != nil {
			return nil, err
		}
	}
	if !o.noZram {
		if err := zramSetup(); err != nil {
			kr.zramNote = err.Error()
			zramReset()
		} else {
			kr.kernel = kernelTarget()
		}
	} else {
		kr.zramNote = "skipped (--no-zram)"
	}
	if err := kr.fill(ctx, f, d); err != nil {
		return nil, err
	}
	return kr, kr.runJobs(ctx, o, f, d)
}

// fill writes d to every target, measuring each server's memory before,
// right after and once settled.
func (kr *kindResult) fill(ctx context.Context, f fio, d dataKind) error {
	// Let the servers settle: a Go server's RSS right after exec still grows.
	time.Sleep(500 * time.Millisecond)
	for _, t := range kr.targets {
		idle, err := t.rss()
		if err != nil {
			return err
		}
		logf("fill %s: %s", d.name, t.name)
		if err := f.fill(ctx, t, d); err != nil {
			return err
		}
		m := memRow{target: t.name, uzram: t.uzram, store: t.short != "null", rssIdle: idle}
		if m.rssFill, err = t.rss(); err != nil {
			return err
		}
		kr.mem = append(kr.mem, m)
	}
	if kr.kernel != nil {
		logf("fill %s: %s", d.name, kr.kernel.name)
		if err := f.fill(ctx, kr.kernel, d); err != nil {
			return err
		}
		mm, err := zramMMStat()
		if err != nil {
			return err
		}
		kr.zramMem = mm
		// What mem_used_total leaves out; a note instead if unreadable.
		if kr.zramTable, err = zramTable(); err == nil {
			kr.zramHandles, err = zramHandles()
		}
		if err != nil {
			kr.zramExtraNote = err.Error()
		}
	}
	// Settled: a server that has just served the fill still holds that
	// connection's buffers until its heap watcher gives them back (uzram:
	// at a poll where store memory held still, within 10 s).
	logf("memory: settling %s", memSettle)
	time.Sleep(memSettle)
	for i, t := range kr.targets {
		m := &kr.mem[i]
		var err error
		if m.rss, err = t.rss(); err != nil {
			return err
		}
		if m.rssAnon, err = t.rssAnon(); err != nil {
			return err
		}
		if t.uzram {
			if m.mm, err = t.mmStat(); err != nil {
				return err
			}
		}
	}

	return nil
}

// runJobs runs every job on every target, interleaved run by run.
func (kr *kindResult) runJobs(ctx context.Context, o options, f fio, d dataKind) error {
	jobs := kr.jobs
	all := kr.targets
	if kr.kernel != nil {
		all = append(append([]*target{}, kr.targets...), kr.kernel)
	}
	total, n := len(jobs)*o.runs*len(all), 0
	for _, j := range jobs {
		kr.samples[j.name] = map[string][]sample{}
		for r := 0; r < o.runs; r++ {
			for _, t := range all {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				n++
				s, err := f.run(ctx, t, j, d)
				if err != nil {
					return err
				}
				kr.samples[j.name][t.name] = append(kr.samples[j.name][t.name], s)
				logf("[%s %d/%d] %s run %d, %s: %s IOPS, p50 %.0f us, p99 %.0f us",
					d.name, n, total, j.name, r+1, t.name, fmtIOPS(s.iops), s.p50, s.p99)
			}
		}
	}
	return nil
}

// pickJobs keeps the jobs whose name contains one of the comma-separated
// patterns.
func pickJobs(js []job, patterns string) []job {
	var out []job
	for _, j := range js {
		for _, p := range strings.Split(patterns, ",") {
			if p = strings.TrimSpace(p); p != "" && strings.Contains(j.name, p) {
				out = append(out, j)
				break
			}
		}
	}
	return out
}

// pickTargets keeps the targets named (by file name) in the comma-separated
// list; an empty list keeps them all.
func pickTargets(ts []*target, names string) []*target {
	if names == "" {
		return ts
	}
	var out []*target
	for _, t := range ts {
		for _, n := range strings.Split(names, ",") {
			if strings.TrimSpace(n) == t.file {
				out = append(out, t)
				break
			}
		}
	}
	return out
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", a...)
}

// goBench runs the packages' Go benchmarks with -benchmem and writes their
// output, with the allocating ones called out, to the results file.
func goBench(ctx context.Context, o options, mdPath string) error {
	args := append([]string{"test", "-run=^$", "-bench=.", "-benchmem", "-benchtime=" + o.goBenchtime, "-count=1"},
		strings.Fields(o.goPkgs)...)
	logf("go %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = o.repo
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, runErr := cmd.CombinedOutput()
	var allocs []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Benchmark") && strings.Contains(l, "allocs/op") && !strings.Contains(l, " 0 allocs/op") {
			allocs = append(allocs, l)
		}
	}
	var b strings.Builder
	env := environment(o)
	fmt.Fprintf(&b, "# uzram Go benchmarks, %s\n\n%s\n", time.Now().Format("2006-01-02 15:04"), env)
	fmt.Fprintf(&b, "`cd %s && go %s`\n\n", o.repo, strings.Join(args, " "))
	if runErr != nil {
		fmt.Fprintf(&b, "**go test failed: %v** (output below)\n\n", runErr)
	}
	if len(allocs) == 0 {
		b.WriteString("Every benchmark reports 0 allocs/op.\n\n")
	} else {
		b.WriteString("Benchmarks that allocate:\n\n```\n" + strings.Join(allocs, "\n") + "\n```\n\n")
	}
	b.WriteString("```\n" + strings.TrimSpace(string(out)) + "\n```\n")
	if err := os.WriteFile(mdPath, []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(b.String())
	logf("wrote %s", mdPath)
	return runErr
}
