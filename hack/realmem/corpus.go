package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The corpus is the anonymous memory of a few programs in the languages
// people run, each holding a realistic heap: a Debian package list parsed
// into its language's maps and lists, and arrays of floats. Every resident
// page of their private anonymous mappings is dumped from /proc/PID/mem, in
// address order, zero pages included: what the kernel would swap out.

// program is one heap builder: how to start it, given the package list.
type program struct {
	name  string
	need  []string // executables it needs on PATH
	build func(work string) error
	argv  func(work, pkgs string) []string
}

// programs are the heaps, sized so that the corpus comes to about 300 MiB.
// heapDir holds the sources (hack/realmem/heaps), goheap the Go one's binary.
func programs(heapDir, goheap string) []program {
	return []program{
		{name: "python", need: []string{"python3"}, argv: func(_, pkgs string) []string {
			return []string{"python3", filepath.Join(heapDir, "heap.py"), pkgs, "12000", "800000"}
		}},
		{name: "node", need: []string{"node"}, argv: func(_, pkgs string) []string {
			return []string{"node", filepath.Join(heapDir, "heap.js"), pkgs, "6000", "800000"}
		}},
		{name: "java", need: []string{"java", "javac"},
			build: func(work string) error {
				out, err := exec.Command("javac", "-d", filepath.Join(work, "java"), filepath.Join(heapDir, "Heap.java")).CombinedOutput()
				if err != nil {
					return fmt.Errorf("javac: %v: %s", err, out)
				}
				return nil
			},
			argv: func(work, pkgs string) []string {
				return []string{"java", "-Xmx128m", "-cp", filepath.Join(work, "java"), "Heap", pkgs, "6000", "400000"}
			}},
		{name: "go", argv: func(_, pkgs string) []string {
			return []string{goheap, pkgs, "6000", "1000000"}
		}},
	}
}

// packageList writes the package list the heaps parse: the largest apt
// Packages list (decompressed by apt-helper), else dpkg's status file, cut
// to at most maxBytes at a paragraph boundary.
func packageList(work string, maxBytes int) (string, error) {
	var src io.Reader
	lists, _ := filepath.Glob("/var/lib/apt/lists/*_Packages*")
	sort.Slice(lists, func(i, j int) bool { return fileSize(lists[i]) > fileSize(lists[j]) })
	if len(lists) > 0 {
		cmd := exec.Command("/usr/lib/apt/apt-helper", "cat-file", lists[0])
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("apt-helper cat-file %s: %w", lists[0], err)
		}
		src = strings.NewReader(string(out))
	} else {
		f, err := os.Open("/var/lib/dpkg/status")
		if err != nil {
			return "", errors.New("no apt Packages list and no /var/lib/dpkg/status to build heaps from")
		}
		defer f.Close()
		src = f
	}
	b, err := io.ReadAll(io.LimitReader(src, int64(maxBytes)))
	if err != nil {
		return "", err
	}
	if i := strings.LastIndex(string(b), "\n\n"); i > 0 {
		b = b[:i+2]
	}
	path := filepath.Join(work, "Packages")
	return path, os.WriteFile(path, b, 0o644)
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// running is a started heap builder.
type running struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan error
}

// start runs p and waits in the background for its "ready" line.
func start(p program, work, pkgs string) (*running, error) {
	for _, n := range p.need {
		if _, err := exec.LookPath(n); err != nil {
			return nil, fmt.Errorf("%s: %s not installed", p.name, n)
		}
	}
	if p.build != nil {
		if err := p.build(work); err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	argv := p.argv(work, pkgs)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	r := &running{name: p.name, cmd: cmd, stdin: stdin, ready: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "ready" {
				r.ready <- nil
				io.Copy(io.Discard, stdout)
				return
			}
		}
		r.ready <- fmt.Errorf("%s exited before it was ready", p.name)
	}()
	return r, nil
}

func (r *running) stop() {
	r.stdin.Close()
	done := make(chan struct{})
	go func() { r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-done
	}
}

// corpusPart is one program's share of the corpus.
type corpusPart struct {
	name         string
	pages        int
	rssAnonBytes uint64
}

// buildCorpus starts every program it can, dumps their anonymous memory into
// out and writes a manifest beside it (out + ".txt").
func buildCorpus(out, heapDir, goheap string) ([]corpusPart, error) {
	work, err := os.MkdirTemp("", "uzram-realmem-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	pkgs, err := packageList(work, 16<<20)
	if err != nil {
		return nil, err
	}
	var rs []*running
	defer func() {
		for _, r := range rs {
			r.stop()
		}
	}()
	for _, p := range programs(heapDir, goheap) {
		r, err := start(p, work, pkgs)
		if err != nil {
			logf("corpus: skipping %v", err)
			continue
		}
		rs = append(rs, r)
	}
	if len(rs) == 0 {
		return nil, errors.New("no heap program could start")
	}
	for _, r := range rs {
		select {
		case err := <-r.ready:
			if err != nil {
				return nil, err
			}
		case <-time.After(5 * time.Minute):
			return nil, fmt.Errorf("%s: not ready after 5 minutes", r.name)
		}
	}
	// Let runtimes finish what they do after the program's last line (a
	// JIT, a concurrent GC cycle), as a process idle long enough to be
	// swapped would have.
	time.Sleep(3 * time.Second)
	f, err := os.Create(out)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	var parts []corpusPart
	var manifest strings.Builder
	for _, r := range rs {
		pid := r.cmd.Process.Pid
		anon, _ := statusBytes(pid, "RssAnon:")
		n, err := dumpAnon(pid, w)
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", r.name, err)
		}
		parts = append(parts, corpusPart{name: r.name, pages: n, rssAnonBytes: anon})
		fmt.Fprintf(&manifest, "%s\t%d pages\t%.1f MiB\tRssAnon %.1f MiB\n", r.name, n, float64(n)/256, float64(anon)/(1<<20))
		logf("corpus: %s: %d pages (%.1f MiB), RssAnon %.1f MiB", r.name, n, float64(n)/256, float64(anon)/(1<<20))
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return parts, os.WriteFile(out+".txt", []byte(manifest.String()), 0o644)
}

// statusBytes reads one kB field of /proc/PID/status, in bytes.
func statusBytes(pid int, field string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no " + field)
}

// dumpAnon writes every resident page of pid's private anonymous mappings
// to w, in address order, and returns how many it wrote. Residency comes
// from /proc/PID/pagemap (bit 63 present, 62 swapped: both count).
func dumpAnon(pid int, w io.Writer) (int, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	n := 0
	page := make([]byte, pageSize)
	for _, line := range strings.Split(string(maps), "\n") {
		start, end, ok := anonRange(line)
		if !ok {
			continue
		}
		npages := int((end - start) / pageSize)
		ents := make([]byte, 8*npages)
		if _, err := pm.ReadAt(ents, int64(start/pageSize*8)); err != nil {
			return n, fmt.Errorf("pagemap %x-%x: %w", start, end, err)
		}
		for i := 0; i < npages; i++ {
			e := binary.LittleEndian.Uint64(ents[8*i:])
			if e&(3<<62) == 0 {
				continue
			}
			if _, err := mem.ReadAt(page, int64(start)+int64(i)*pageSize); err != nil {
				return n, fmt.Errorf("mem %x: %w", start+uint64(i)*pageSize, err)
			}
			if _, err := w.Write(page); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// anonRange parses a /proc/PID/maps line and reports whether it is a
// readable private anonymous mapping (heap, stack, or no file at all).
func anonRange(line string) (start, end uint64, ok bool) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return 0, 0, false
	}
	perms, inode := f[1], f[4]
	name := ""
	if len(f) >= 6 {
		name = f[5]
	}
	if len(perms) < 4 || perms[0] != 'r' || perms[3] != 'p' || inode != "0" {
		return 0, 0, false
	}
	if name != "" && name != "[heap]" && name != "[stack]" && !strings.HasPrefix(name, "[anon:") {
		return 0, 0, false // [vvar], [vdso], [vsyscall], memfds and the like
	}
	lo, hi, found := strings.Cut(f[0], "-")
	if !found {
		return 0, 0, false
	}
	s, err1 := strconv.ParseUint(lo, 16, 64)
	e, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || e <= s {
		return 0, 0, false
	}
	return s, e, true
}
