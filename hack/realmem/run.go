package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// config is one uzram setup measured on the corpus: serve flags, and what
// to run through the CLI once the copy is done (recompression, say).
type config struct {
	name  string
	bin   string   // uzram binary
	flags []string // extra serve flags
	after [][]string
}

// sample is a server's memory at one moment.
type sample struct {
	at                  string
	rss, anon, file, hw uint64 // VmRSS, RssAnon, RssFile, VmHWM
}

// uzResult is one config's measurements.
type uzResult struct {
	cfg          config
	idle         sample
	samples      []sample // 1 s, then each settle delay after the copy
	copyTime     time.Duration
	cpuCopy      time.Duration // server CPU time during the copy
	cpuAfter     time.Duration // and during the after steps
	mm, recomp   []uint64
	dedup        []uint64
	tableBytes   uint64
	err          error
	stdout, ctrl string
}

// server is a running `uzram serve`.
type server struct {
	cmd        *exec.Cmd
	sock, ctrl string
	out        string
	done       chan struct{}
	bin        string
}

func startServer(c config, dir string, size string) (*server, error) {
	base := filepath.Join(dir, fileName(c.name))
	s := &server{sock: base + ".sock", ctrl: base + ".ctl", out: base + ".out", done: make(chan struct{}), bin: c.bin}
	out, err := os.Create(s.out)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	args := append([]string{"serve", "--socket", s.sock, "--control", s.ctrl, "--size", size, "--name", "uzram0", "--no-mlock"}, c.flags...)
	s.cmd = exec.Command(c.bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = out, out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	for deadline := time.Now().Add(15 * time.Second); ; {
		if conn, err := net.Dial("unix", s.sock); err == nil {
			conn.Close()
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("%s exited at start: %s", c.name, readTail(s.out))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("%s: socket not answering", c.name)
		}
	}
}

// fileName turns a config's name into a file name an NBD URI can carry.
func fileName(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, name)
}

func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

func (s *server) sample(at string) sample {
	pid := s.cmd.Process.Pid
	v := sample{at: at}
	v.rss, _ = statusBytes(pid, "VmRSS:")
	v.anon, _ = statusBytes(pid, "RssAnon:")
	v.file, _ = statusBytes(pid, "RssFile:")
	v.hw, _ = statusBytes(pid, "VmHWM:")
	return v
}

// cpu is the server's user+system CPU time so far.
func (s *server) cpu() time.Duration { return procCPU(s.cmd.Process.Pid) }

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces): state is field 3,
	// utime 14 and stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / 100 // USER_HZ
}

// cli runs the uzram CLI against the server's control socket.
func (s *server) cli(args ...string) (string, error) {
	cmd := exec.Command(s.bin, append([]string{"--control", s.ctrl}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("uzram %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (s *server) stat(file string) ([]uint64, error) {
	out, err := s.cli(file, "uzram0")
	if err != nil {
		return nil, err
	}
	return parseUints(out)
}

func parseUints(s string) ([]uint64, error) {
	var out []uint64
	for _, f := range strings.Fields(s) {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		out = append(out, v)
	}
	return out, nil
}

func readTail(p string) string {
	b, _ := os.ReadFile(p)
	if len(b) > 400 {
		b = b[len(b)-400:]
	}
	return strings.TrimSpace(string(b))
}

// measureUzram copies the corpus into a fresh server with nbdcopy's
// defaults, then samples its memory 1 s after and at each settle delay.
// The samples after the first run in the background: done is closed when
// the last is taken, so several configs can settle at once.
func measureUzram(c config, dir, corpus, size string, settle []time.Duration, wg *sync.WaitGroup) *uzResult {
	r := &uzResult{cfg: c}
	s, err := startServer(c, dir, size)
	if err != nil {
		r.err = err
		return r
	}
	time.Sleep(500 * time.Millisecond)
	r.idle = s.sample("idle")
	cpu0 := s.cpu()
	t0 := time.Now()
	logf("%s: nbdcopy", c.name)
	cmd := exec.Command("nbdcopy", corpus, "nbd+unix:///uzram0?socket="+s.sock)
	if out, err := cmd.CombinedOutput(); err != nil {
		r.err = fmt.Errorf("nbdcopy: %v: %s", err, out)
		s.stop()
		return r
	}
	r.copyTime = time.Since(t0)
	r.cpuCopy = s.cpu() - cpu0
	end := time.Now()
	time.Sleep(time.Second)
	r.samples = append(r.samples, s.sample("1 s"))
	cpu1 := s.cpu()
	for _, a := range c.after {
		if _, err := s.cli(a...); err != nil {
			r.err = err
			s.stop()
			return r
		}
	}
	r.cpuAfter = s.cpu() - cpu1
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer s.stop()
		for _, d := range settle {
			time.Sleep(time.Until(end.Add(d)))
			r.samples = append(r.samples, s.sample(d.String()))
		}
		if r.mm, err = s.stat("mm-stat"); err != nil {
			r.err = err
			return
		}
		r.recomp, _ = s.stat("recomp-stat")
		if out, err := s.cli("dedup-stat", "uzram0"); err == nil {
			r.dedup, _ = parseUints(out)
		}
	}()
	return r
}

// zramResult is the kernel's figures for the same corpus.
type zramResult struct {
	algo, recomp   string
	mm             []uint64
	table, handles uint64
	cpu            time.Duration // the writer's CPU time: zram compresses in its context (direct I/O)
	cpuRecomp      time.Duration
	note           string
}

const zramSys = "/sys/block/zram0"

// measureZram writes the corpus to /dev/zram0 with dd (direct I/O: zram
// compresses in dd's context, so dd's CPU time is what storing cost),
// optionally recompresses idle pages, and reads mm_stat, the slot table
// (vmallocinfo) and zsmalloc's handles (slabinfo). It uses zram0 only if it
// is unconfigured, and resets it afterwards.
func measureZram(corpus, algo, recomp, size string) *zramResult {
	r := &zramResult{algo: algo, recomp: recomp}
	b, err := os.ReadFile(zramSys + "/disksize")
	if err != nil {
		r.note = "no zram on this kernel"
		return r
	}
	if strings.TrimSpace(string(b)) != "0" {
		r.note = "/dev/zram0 is in use (configured): skipped"
		return r
	}
	if algs, _ := os.ReadFile(zramSys + "/comp_algorithm"); !strings.Contains(" "+strings.NewReplacer("[", " ", "]", " ").Replace(string(algs))+" ", " "+algo+" ") {
		r.note = fmt.Sprintf("this kernel's zram has no %s (%s)", algo, strings.TrimSpace(string(algs)))
		return r
	}
	defer zramReset()
	write := func(f, v string) error { return os.WriteFile(zramSys+"/"+f, []byte(v), 0) }
	if err := write("comp_algorithm", algo); err != nil {
		r.note = err.Error()
		return r
	}
	if recomp != "" {
		if err := write("recomp_algorithm", "algo="+recomp); err != nil {
			r.note = fmt.Sprintf("this kernel's zram cannot recompress with %s: %v", recomp, err)
			return r
		}
	}
	if err := write("disksize", size); err != nil {
		r.note = err.Error()
		return r
	}
	logf("zram %s: dd", algo)
	cmd := exec.Command("dd", "if="+corpus, "of=/dev/zram0", "bs=1M", "oflag=direct", "status=none")
	if out, err := cmd.CombinedOutput(); err != nil {
		r.note = fmt.Sprintf("dd: %v: %s", err, out)
		return r
	}
	r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if recomp != "" {
		// Recompression runs in the writer's context too: this thread's.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t := selfCPU()
		if err := write("idle", "all"); err == nil {
			err = write("recompress", "type=idle")
		}
		r.cpuRecomp = selfCPU() - t
		if err != nil {
			r.note = "recompress: " + err.Error()
		}
	}
	mm, err := os.ReadFile(zramSys + "/mm_stat")
	if err == nil {
		r.mm, err = parseUints(string(mm))
	}
	if err != nil {
		r.note = err.Error()
		return r
	}
	r.table, _ = zramTable()
	r.handles, _ = zramHandles()
	return r
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_THREAD, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func zramReset() {
	for i := 0; i < 50; i++ {
		if os.WriteFile(zramSys+"/reset", []byte("1"), 0) == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintln(os.Stderr, "realmem: could not reset /dev/zram0: echo 1 >", zramSys+"/reset")
}

// zramTable is the slot table's vmalloc area (/proc/vmallocinfo).
func zramTable() (uint64, error) {
	b, err := os.ReadFile("/proc/vmallocinfo")
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "disksize_store") && !strings.Contains(l, "zram_meta_alloc") {
			continue
		}
		for _, f := range strings.Fields(l) {
			if p, ok := strings.CutPrefix(f, "pages="); ok {
				v, err := strconv.ParseUint(p, 10, 64)
				if err != nil {
					return 0, err
				}
				n += v << 12
			}
		}
	}
	if n == 0 {
		return 0, errors.New("no zram table in /proc/vmallocinfo")
	}
	return n, nil
}

// zramHandles is zsmalloc's handle cache for zram0 (/proc/slabinfo).
func zramHandles() (uint64, error) {
	b, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 16 && f[0] == "zs_handle-zram0" {
			pps, err1 := strconv.ParseUint(f[5], 10, 64)
			slabs, err2 := strconv.ParseUint(f[14], 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				return 0, err
			}
			return slabs * pps << 12, nil
		}
	}
	return 0, errors.New("no zs_handle-zram0 in /proc/slabinfo")
}
