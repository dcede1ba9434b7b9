package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// deviceSize is every target's size; the benchmarks touch only its first half
// (fillSize): by default a 2 GiB device with 1 GiB stored, the setup of
// README's Performance figures. --fill changes both (setFill).
var (
	fillBytes  int64 = 1 << 30
	fillSize         = "1G"
	deviceSize       = "2G"
	// For the report: "1 GiB", "2 GiB".
	fillName, deviceName = "1 GiB", "2 GiB"
)

const (
	zramDev = "/dev/zram0"
	zramSys = "/sys/block/zram0"
)

// setFill sets the fill from a --fill value in whole MiB or GiB ("512M",
// "4G"); devices are twice as big.
func setFill(s string) error {
	var n int64
	var unit string
	if _, err := fmt.Sscanf(s, "%d%s", &n, &unit); err != nil || n <= 0 || (unit != "M" && unit != "G") {
		return fmt.Errorf("--fill %q: want a whole number of MiB or GiB, like 512M or 4G", s)
	}
	shift := map[string]uint{"M": 20, "G": 30}[unit]
	fillBytes, fillSize, deviceSize = n<<shift, s, fmt.Sprintf("%d%s", 2*n, unit)
	fillName, deviceName = fmt.Sprintf("%d %siB", n, unit), fmt.Sprintf("%d %siB", 2*n, unit)
	return nil
}

// target is one thing fio measures: an NBD server on a unix socket, or the
// host's kernel zram (a different path, reported apart).
type target struct {
	name   string
	short  string // chart and ratio labels
	file   string // base name of its socket and output files
	uzram  bool
	kernel bool
	argv   []string // nil for the kernel target
	sock   string

	cmd    *exec.Cmd
	stdout string // file holding the server's stdout (uzram prints mm_stat there)
	done   chan struct{}
}

func serverTargets(bin, binB, dir string) []*target {
	uz := func(alg, mode string) *target {
		return uzTarget(bin, "uzram", "", alg, mode, dir)
	}
	kit := func(name, short, file string, plugin ...string) *target {
		sock := filepath.Join(dir, file+".sock")
		// -f keeps nbdkit in the foreground so its PID is the one whose RSS we read.
		argv := append([]string{"nbdkit", "-f", "-U", sock}, plugin...)
		return &target{name: name, short: short, file: file, sock: sock, argv: argv}
	}
	ts := []*target{
		uz("lz4", "percpu"),
		uz("lz4", "pool"),
		uz("zstd", "percpu"),
	}
	if binB != "" {
		ts = append(ts, uzTarget(binB, "uzramB", " B", "lz4", "percpu", dir))
	}
	return append(ts,
		kit("nbdkit null", "null", "nbdkit-null", "null", "size="+deviceSize),
		kit("nbdkit memory sparse", "mem sparse", "nbdkit-sparse", "memory", "size="+deviceSize, "allocator=sparse"),
		kit("nbdkit memory zstd", "mem zstd", "nbdkit-zstd", "memory", "size="+deviceSize, "allocator=zstd"),
	)
}

// uzTarget is one uzram server; prefix and suffix tell a second binary's
// apart from the first's.
func uzTarget(bin, prefix, suffix, alg, mode, dir string) *target {
	file := prefix + "-" + alg + "-" + mode
	sock := filepath.Join(dir, file+".sock")
	return &target{name: prefix + " " + alg + " " + mode, short: alg + "/" + mode + suffix, file: file, uzram: true, sock: sock,
		argv: []string{bin, "serve", "--socket", sock, "--size", deviceSize, "--algorithm", alg,
			"--stream-mode", mode, "--no-mlock", "--name", "uzram0"}}
}

func kernelTarget() *target {
	return &target{name: "kernel zram lz4", short: "zram", file: "zram", kernel: true}
}

// fioTarget gives the fio options that point a job at t.
func (t *target) fioTarget() []string {
	if t.kernel {
		return []string{"--ioengine=libaio", "--direct=1", "--filename=" + zramDev}
	}
	return []string{"--ioengine=nbd", "--uri=nbd+unix:///uzram0?socket=" + t.sock}
}

// procs tracks every child we start so a signal or a failure can stop them all.
var procs = struct {
	sync.Mutex
	live map[*target]bool
}{live: map[*target]bool{}}

func (t *target) start(dir string) error {
	os.Remove(t.sock) // nbdkit leaves its socket behind and refuses to reuse it
	t.stdout = filepath.Join(dir, t.file+".out")
	out, err := os.Create(t.stdout)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(t.argv[0], t.argv[1:]...)
	cmd.Stdout = out
	cmd.Stderr = out
	// Own process group, so a ^C on the terminal reaches us first and we stop
	// the servers in order; Pdeathsig covers our own crash.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	t.cmd = cmd
	t.done = make(chan struct{})
	go func() { cmd.Wait(); close(t.done) }()
	procs.Lock()
	procs.live[t] = true
	procs.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("unix", t.sock)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-t.done:
			return fmt.Errorf("%s exited at start: %s", t.name, tail(t.stdout))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: socket not answering after 15s: %w", t.name, err)
		}
	}
}

func (t *target) stop() {
	if t.cmd == nil {
		return
	}
	t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-t.done:
	case <-time.After(20 * time.Second):
		t.cmd.Process.Kill()
		<-t.done
	}
	procs.Lock()
	delete(procs.live, t)
	procs.Unlock()
	t.cmd = nil
	os.Remove(t.sock)
}

func stopAll() {
	procs.Lock()
	var ts []*target
	for t := range procs.live {
		ts = append(ts, t)
	}
	procs.Unlock()
	for _, t := range ts {
		t.stop()
	}
}

// rss reads VmRSS, in bytes.
func (t *target) rss() (uint64, error) {
	return t.status("VmRSS:")
}

// rssAnon reads RssAnon, in bytes: the process's private memory, without
// the binary's and libraries' file pages (shared page cache).
func (t *target) rssAnon() (uint64, error) {
	return t.status("RssAnon:")
}

// status reads one kB field of /proc/PID/status, in bytes.
func (t *target) status(field string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", t.cmd.Process.Pid))
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

// mmStat asks uzram for its stats (SIGUSR1) and waits for the new mm_stat
// line on its stdout.
func (t *target) mmStat() ([]uint64, error) {
	before := bytes.Count(readFile(t.stdout), []byte("mm_stat "))
	if err := t.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b := readFile(t.stdout)
		if bytes.Count(b, []byte("mm_stat ")) <= before {
			continue
		}
		var last string
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "mm_stat ") {
				last = sc.Text()
			}
		}
		if !strings.HasSuffix(string(b), "\n") {
			continue // line not complete yet
		}
		return parseUints(strings.TrimPrefix(last, "mm_stat "))
	}
	return nil, fmt.Errorf("%s: no mm_stat on stdout after SIGUSR1", t.name)
}

func readFile(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

func tail(p string) string {
	b := readFile(p)
	if len(b) > 400 {
		b = b[len(b)-400:]
	}
	return strings.TrimSpace(string(b))
}

func parseUints(s string) ([]uint64, error) {
	var out []uint64
	for _, f := range strings.Fields(s) {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) < 3 {
		return nil, fmt.Errorf("short mm_stat %q", s)
	}
	return out, nil
}

// zram owns /dev/zram0 for the run. It only ever resets a device it set up
// itself, and refuses one someone else has configured.
var zram struct {
	sync.Mutex
	mine   bool
	marker string // while set up: file naming our PID, so bench.sh can reset after a SIGKILL
}

func zramAvailable() error {
	b, err := os.ReadFile(zramSys + "/disksize")
	if err != nil {
		return fmt.Errorf("no host zram: %w", err)
	}
	if strings.TrimSpace(string(b)) != "0" {
		return errors.New("/dev/zram0 is configured (disksize " + strings.TrimSpace(string(b)) + "): in use by someone else, skipped")
	}
	if !strings.Contains(string(readFile(zramSys+"/comp_algorithm")), "lz4") {
		return errors.New("host zram has no lz4")
	}
	return nil
}

func zramSetup() error {
	zram.Lock()
	defer zram.Unlock()
	if err := zramAvailable(); err != nil {
		return err
	}
	zram.mine = true
	if zram.marker != "" {
		os.WriteFile(zram.marker, []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
	if err := os.WriteFile(zramSys+"/comp_algorithm", []byte("lz4"), 0); err != nil {
		return err
	}
	return os.WriteFile(zramSys+"/disksize", []byte(deviceSize), 0)
}

func zramReset() {
	zram.Lock()
	defer zram.Unlock()
	if !zram.mine {
		return
	}
	// reset fails with EBUSY while an opener lingers; fio is gone by now, but
	// udev may still hold the device for a moment.
	for i := 0; i < 50; i++ {
		if os.WriteFile(zramSys+"/reset", []byte("1"), 0) == nil {
			zram.mine = false
			if zram.marker != "" {
				os.Remove(zram.marker)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintln(os.Stderr, "bench: could not reset", zramDev, "- run: echo 1 > "+zramSys+"/reset")
}

// zramTable is the kernel memory of zram's slot table: the vmalloc area
// disksize_store allocates (zram_meta_alloc, inlined), from /proc/vmallocinfo.
// mem_used_total leaves it out.
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

// zramHandles is the memory of zsmalloc's handle cache for zram0 (one 8-byte
// handle per stored object), from /proc/slabinfo; mem_used_total leaves it
// out. Its zspage records share a merged cache and are not counted.
func zramHandles() (uint64, error) {
	b, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		// name active objs objsize objperslab pagesperslab : tunables ... : slabdata active_slabs num_slabs sharedavail
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

func zramMMStat() ([]uint64, error) {
	b, err := os.ReadFile(zramSys + "/mm_stat")
	if err != nil {
		return nil, err
	}
	return parseUints(string(b))
}
