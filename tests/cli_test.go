package tests

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/uzram/uzram/nbdclient"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

// control is the control socket `uzram serve` puts beside its device socket.
func (s *server) control() string { return filepath.Join(filepath.Dir(s.Socket), "control.sock") }

// cli runs the uzram CLI against s's daemon and returns stdout, stderr and
// the exit code.
func cli(t *testing.T, s *server, args ...string) (string, string, int) {
	t.Helper()
	if s != nil {
		args = append([]string{"--control", s.control()}, args...)
	}
	cmd := exec.Command(uzramBin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("uzram %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// cliOK runs the CLI and fails the test unless it succeeds quietly.
func cliOK(t *testing.T, s *server, args ...string) string {
	t.Helper()
	out, errOut, code := cli(t, s, args...)
	if code != 0 || errOut != "" {
		t.Fatalf("uzram %v: exit %d: %s", args, code, errOut)
	}
	return out
}

// writePages writes deterministic content through NBD: zero pages,
// same-filled pages and lz4-compressible text pages.
func writePages(t *testing.T, sock, export string, zero, filled, text int) {
	t.Helper()
	c, err := nbdclient.Dial("unix", sock, export)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	page := 0
	put := func(p []byte) {
		if err := c.WriteAt(p, uint64(page)*4096); err != nil {
			t.Fatal(err)
		}
		page++
	}
	for range zero {
		put(make([]byte, 4096))
	}
	for range filled {
		put(bytes.Repeat([]byte{0xab}, 4096))
	}
	for i := range text {
		line := fmt.Sprintf("page %04d: the quick brown fox jumps over the lazy dog\n", i)
		put([]byte(strings.Repeat(line, 4096/len(line)+1)[:4096]))
	}
}

// goldenServer is a daemon with three devices of known content.
func goldenServer(t *testing.T) *server {
	s := startServer(t, "--size", "64M", "--streams", "2")
	writePages(t, s.Socket, "uzram0", 16, 8, 32)
	if out := cliOK(t, s, "--find", "--size", "128M", "--algorithm", "zstd", "--algorithm-params", "level=3", "--streams", "1"); out != "uzram1\n" {
		t.Fatalf("--find printed %q, want uzram1", out)
	}
	cliOK(t, s, "--size", "1G", "--algorithm", "lz4hc", "--mem-limit", "64M", "--streams", "4", "swapdev")
	return s
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./tests -run CLIList -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

// Every list format, through a real daemon, against golden files.
func TestCLIListFormats(t *testing.T) {
	s := goldenServer(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"list-default", nil},
		{"list-raw", []string{"--raw"}},
		{"list-bytes", []string{"--bytes"}},
		{"list-noheadings", []string{"--noheadings"}},
		{"list-output", []string{"--output", "NAME,DISKSIZE,ZERO-PAGES,comp-ratio"}},
		{"list-output-plus", []string{"--output", "+ZERO-PAGES,MEM-LIMIT"}},
		{"list-output-all", []string{"--output-all"}},
		{"list-output-all-raw-bytes", []string{"--output-all", "--raw", "--bytes", "--noheadings"}},
		{"list-json", []string{"--json"}},
		{"list-json-bytes-all", []string{"--json", "--bytes", "--output-all"}},
		{"list-named", []string{"-o", "NAME,ALGORITHM,MEM-LIMIT", "swapdev", "uzram1"}},
	} {
		t.Run(tc.name, func(t *testing.T) { golden(t, tc.name, cliOK(t, s, tc.args...)) })
	}
}

var mmStatFormat = regexp.MustCompile(`^( *[0-9]+ ){8} *[0-9]+\n$`)

// Create, list, stats, knobs and reset end to end through the CLI.
func TestCLICreateStatsReset(t *testing.T) {
	s := startServer(t, "--size", "16M", "--streams", "2")
	if out := cliOK(t, s, "--find", "--size", "8M", "--streams", "1"); out != "uzram1\n" {
		t.Fatalf("--find printed %q", out)
	}
	sock1 := filepath.Join(filepath.Dir(s.Socket), "uzram1.sock")
	writePages(t, sock1, "uzram1", 1, 0, 2)

	mm := cliOK(t, s, "mm-stat", "uzram1")
	if !mmStatFormat.MatchString(mm) {
		t.Fatalf("mm-stat %q is not zram's format", mm)
	}
	var f [9]int64
	fmt.Sscan(mm, &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8])
	if want := fmt.Sprintf("%8d %8d %8d %8d %8d %8d %8d %8d %8d\n", f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]); mm != want || f[0] != 3*4096 || f[5] != 1 {
		t.Fatalf("mm-stat %q: want orig_data_size 12288 and same_pages 1 in zram's columns", mm)
	}
	if io := cliOK(t, s, "io-stat", "uzram1"); io != fmt.Sprintf("%8d %8d %8d %8d\n", 0, 0, 0, 0) {
		t.Fatalf("io-stat %q", io)
	}
	if dbg := cliOK(t, s, "debug-stat", "uzram1"); dbg != "version: 1\n0        0\n" {
		t.Fatalf("debug-stat %q", dbg)
	}

	cliOK(t, s, "mem-limit", "uzram1", "32M")
	cliOK(t, s, "mem-used-max", "uzram1", "reset")
	if out := cliOK(t, s, "compact", "uzram1"); !strings.HasSuffix(out, " pages freed\n") {
		t.Fatalf("compact printed %q", out)
	}
	if out := cliOK(t, s, "idle", "uzram1", "all"); out != "2 pages idle\n" {
		t.Fatalf("idle all printed %q, want the 2 compressed pages", out)
	}
	cliOK(t, s, "recomp-algorithm", "uzram1", "algo=zstd priority=1")
	cliOK(t, s, "algorithm-params", "uzram1", "priority=1", "level=5") // unquoted works too
	cliOK(t, s, "comp-algorithm", "uzram1", "zstd")
	cliOK(t, s, "max-comp-streams", "uzram1", "3")
	if out := cliOK(t, s, "-n", "-o", "NAME,ALGORITHM,MEM-LIMIT,STREAMS,DATA", "uzram1"); out != "uzram1 zstd 32M 3 12K\n" {
		t.Fatalf("after the knobs: %q", out)
	}
	if out := cliOK(t, s, "recompress", "uzram1", "type=idle"); out == "" {
		t.Fatalf("recompress printed nothing")
	}

	// SIGUSR1 prints every device.
	before := strings.Count(s.stdout(), "device uzram1\n")
	s.cmd.Process.Signal(syscall.SIGUSR1)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasSuffix(s.stdout(), "\n") || strings.Count(s.stdout(), "io_stat ") < 2*(before+1) {
		if time.Now().After(deadline) {
			t.Fatalf("no stats for both devices after SIGUSR1: %q", s.stdout())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(s.stdout(), "device uzram0\nmm_stat ") || !strings.Contains(s.stdout(), fmt.Sprintf("device uzram1\nmm_stat %8d ", 3*4096)) {
		t.Fatalf("SIGUSR1 output lacks a device, or uzram1's orig_data_size:\n%s", s.stdout())
	}

	// Reset: refused while attached, with what to do about it.
	c, err := nbdclient.Dial("unix", sock1, "uzram1")
	if err != nil {
		t.Fatal(err)
	}
	_, errOut, code := cli(t, s, "--reset", "uzram1")
	if code != 1 || !strings.Contains(errOut, "uzram1 is in use by 1 NBD connection(s)") || !strings.Contains(errOut, "uzram detach uzram1") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("reset while attached: exit %d: %q", code, errOut)
	}
	c.Close()
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, errOut, code = cli(t, s, "--reset", "uzram1")
		if code == 0 || !strings.Contains(errOut, "in use") || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != 0 {
		t.Fatalf("reset: %s", errOut)
	}
	if out := cliOK(t, s, "-n", "-o", "NAME"); out != "uzram0\n" {
		t.Fatalf("after reset: %q", out)
	}
	if _, err := os.Stat(sock1); !os.IsNotExist(err) {
		t.Fatalf("uzram1's socket outlived it: %v", err)
	}
}

// Bad input: one line on stderr saying what is wrong and what would be
// right, exit 1, nothing on stdout, nothing changed.
func TestCLIBadInput(t *testing.T) {
	s := startServer(t, "--size", "16M", "--streams", "2")
	before := cliOK(t, s, "--output-all", "--bytes")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--find", "--size", "4X"}, `bad size: invalid size "4X": want a number with an optional K, M, G or T suffix, like 4G`},
		{[]string{"--find", "--size", "0"}, "a device needs at least one page"},
		{[]string{"--find"}, "--find needs --size, like uzram --find --size 4G"},
		{[]string{"--find", "--size", "4G", "--algorithm", "lzo"}, `unknown algorithm "lzo": want one of deflate, lz4, lz4hc, zstd`},
		{[]string{"--find", "--size", "4G", "--algorithm", "zstd", "--algorithm-params", "level=99"}, "bad algorithm params"},
		{[]string{"--size", "4G", "uzram0"}, "device uzram0 already exists"},
		{[]string{"--size", "4G", "bad/name"}, "bad device name"},
		{[]string{"--reset", "uzram7"}, `no device "uzram7" (devices: uzram0)`},
		{[]string{"--reset"}, "--reset needs the devices to free"},
		{[]string{"uzram7"}, `no device "uzram7"`},
		{[]string{"-o", "NAME,SIZE"}, `--output: unknown column "SIZE" (known: NAME,DISKSIZE,`},
		{[]string{"--frobnicate"}, "flag provided but not defined: -frobnicate"},
		{[]string{"mem-limit", "uzram7", "1G"}, `no device "uzram7"`},
		{[]string{"mem-limit", "uzram0", "lots"}, "bad mem_limit"},
		{[]string{"mem-limit", "uzram0"}, "mem-limit needs NAME SIZE"},
		{[]string{"mem-used-max", "uzram0", "now"}, "mem-used-max takes NAME reset"},
		{[]string{"idle", "uzram0", "soon"}, "bad idle value \"soon\": want all, or an age in seconds"},
		{[]string{"recomp-algorithm", "uzram0", "algo=lzo"}, `unknown algorithm "lzo"`},
		{[]string{"recompress", "uzram0", "type=cold"}, "type \"cold\": want idle, huge or huge_idle"},
		{[]string{"algorithm-params", "uzram0", "priority=2", "level=1"}, "no algorithm at priority 2"},
		{[]string{"comp-algorithm", "uzram0", "brotli"}, `unknown algorithm "brotli"`},
		{[]string{"compact", "uzram0", "now"}, "compact takes only NAME"},
		{[]string{"mm-stat"}, "mm-stat needs one device NAME"},
		{[]string{"attach", "uzram0", "/dev/sda"}, `bad NBD device "/dev/sda": want /dev/nbdN`},
		{[]string{"detach", "uzram0"}, "uzram0 is not attached to an NBD device"},
		{[]string{"detach", "/dev/nbd9"}, "/dev/nbd9 is not attached to a device of this uzram daemon"},
		{[]string{"swapoff", "uzram0"}, "uzram0 is not attached"},
		{[]string{"swapon"}, "swapon needs --size, like uzram swapon --size 4G"},
		{[]string{"--find", "--size", "4M", "--ublk-id", "2"}, "a ublk id or queue count was given for an NBD device: add --ublk"},
		{[]string{"--find", "--size", "4M", "--ublk", "--ublk-id", "-5"}, "bad ublk id -5"},
		{[]string{"--find", "--size", "4M", "--ublk", "--ublk-queues", "100"}, "bad ublk queue count 100"},
	}
	if _, err := os.Stat("/dev/ublk-control"); err != nil {
		// Without ublk in the kernel: one line, and nothing made.
		noUblk := "no /dev/ublk-control: this kernel has no ublk (modprobe ublk_drv; Linux 6.0+)"
		cases = append(cases, []struct {
			args []string
			want string
		}{
			{[]string{"--find", "--size", "4M", "--ublk"}, noUblk},
			{[]string{"swapon", "--size", "4M", "--ublk"}, noUblk},
		}...)
	}
	for _, tc := range cases {
		out, errOut, code := cli(t, s, tc.args...)
		if code != 1 || out != "" || !strings.HasPrefix(errOut, "uzram: ") || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("uzram %s: exit %d, stdout %q, stderr %q; want exit 1 and one line containing %q",
				strings.Join(tc.args, " "), code, out, errOut, tc.want)
		}
	}
	if after := cliOK(t, s, "--output-all", "--bytes"); after != before {
		t.Errorf("bad input changed the devices:\n%s\nwas:\n%s", after, before)
	}
}

// TestCLIServeUblkNoKernel: serve --ublk on a kernel without ublk says so
// in one line and exits 1, before anything starts.
func TestCLIServeUblkNoKernel(t *testing.T) {
	if _, err := os.Stat("/dev/ublk-control"); err == nil {
		t.Skip("this kernel has ublk")
	}
	out, errOut, code := cli(t, nil, "serve", "--ublk", "--no-mlock", "--control", filepath.Join(t.TempDir(), "c.sock"))
	if want := "uzram: no /dev/ublk-control: this kernel has no ublk (modprobe ublk_drv; Linux 6.0+)\n"; code != 1 || out != "" || errOut != want {
		t.Fatalf("serve --ublk: exit %d, stdout %q, stderr %q; want exit 1 and %q", code, out, errOut, want)
	}
}

func TestCLINoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "control.sock")
	for _, args := range [][]string{{}, {"--find", "--size", "1G"}, {"mm-stat", "uzram0"}, {"--reset", "uzram0"}} {
		out, errOut, code := cli(t, nil, append([]string{"--control", sock}, args...)...)
		want := "uzram: no uzram daemon on " + sock + ": start one with `uzram serve` or give its socket with --control\n"
		if code != 1 || out != "" || errOut != want {
			t.Errorf("uzram %v with no daemon: exit %d, %q %q", args, code, out, errOut)
		}
	}
	// UZRAM_CONTROL works like --control.
	cmd := exec.Command(uzramBin)
	cmd.Env = append(os.Environ(), "UZRAM_CONTROL="+sock)
	if out, _ := cmd.CombinedOutput(); !strings.Contains(string(out), "no uzram daemon on "+sock) {
		t.Errorf("UZRAM_CONTROL ignored: %s", out)
	}
}

// A daemon started with no device takes its devices from the CLI.
func TestCLIServeNoDevice(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(uzramBin, "serve", "--no-device", "--socket-dir", dir, "--no-mlock")
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if strings.Contains(errOut.String(), "DATA RACE") {
			t.Errorf("race in uzram:\n%s", errOut.String())
		}
	}()
	s := &server{Socket: filepath.Join(dir, "none")} // control() is dir/control.sock
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, _, code := cli(t, s); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("control socket never came up: %s", errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out := cliOK(t, s); out != "NAME ALGORITHM DISKSIZE DATA COMPR TOTAL STREAMS DEVICE MOUNTPOINT\n" {
		t.Fatalf("empty daemon lists %q", out)
	}
	if out := cliOK(t, s, "--find", "--size", "4M"); out != "uzram0\n" {
		t.Fatalf("--find on an empty daemon printed %q", out)
	}
	writePages(t, filepath.Join(dir, "uzram0.sock"), "uzram0", 0, 0, 1)
	if out := cliOK(t, s, "-n", "-o", "NAME,DATA"); out != "uzram0 4K\n" {
		t.Fatalf("list: %q", out)
	}
}

func TestCLIMetrics(t *testing.T) {
	s := startServer(t, "--size", "16M", "--streams", "2", "--metrics", "127.0.0.1:0")
	writePages(t, s.Socket, "uzram0", 2, 0, 3)
	addr := regexp.MustCompile(`msg=metrics addr=(\S+)`).FindStringSubmatch(s.stderr())
	if addr == nil {
		t.Fatalf("no metrics address logged: %s", s.stderr())
	}
	want := []string{
		`uzram_orig_data_size_bytes{device="uzram0"} 20480`,
		`uzram_same_pages{device="uzram0"} 2`,
		`uzram_disksize_bytes{device="uzram0"} 16777216`,
		`uzram_failed_writes_total{device="uzram0"} 0`,
		`uzram_requests_total{transport="nbd",command="write",result="ok"} 5`,
		`uzram_request_duration_seconds_count{command="write"} 5`,
	}
	// A request's duration is observed once its reply has gone out, so the
	// client can have its reply a moment before the histogram counts it:
	// scrape again for a while before calling a line missing.
	var body []byte
	var missing []string
	for try := 0; try < 50; try++ {
		resp, err := http.Get("http://" + addr[1] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Fatalf("Content-Type %q", ct)
		}
		missing = missing[:0]
		for _, w := range want {
			if !strings.Contains(string(body), w+"\n") {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("metrics lack %q:\n%s", missing, body)
}

func TestCLISetupDryRun(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "uzram.conf")
	os.WriteFile(conf, []byte(`
[uzram0]
zram-size = min(ram, 256)
compression-algorithm = lz4 (zstd)

[uzram1]
zram-size = 100 + 28
compression-algorithm = zstd(level=3) (zstd(level=9)) (deflate)
swap-priority = 5
transport = ublk
`), 0o644)
	out, errOut, code := cli(t, nil, "setup", "--config", conf, "--dry-run")
	want := `uzram0 size=256M algorithm=lz4 params="" recomp="zstd" swap-priority=100 transport=nbd
uzram1 size=128M algorithm=zstd params="level=3" recomp="zstd level=9,deflate" swap-priority=5 transport=ublk
`
	if code != 0 || out != want {
		t.Fatalf("setup --dry-run: exit %d %s\n%s\nwant\n%s", code, errOut, out, want)
	}
	if _, errOut, code := cli(t, nil, "setup", "--config", "../contrib/uzram.conf", "--dry-run"); code != 0 {
		t.Fatalf("contrib/uzram.conf: %s", errOut)
	}
	os.WriteFile(conf, []byte("[uzram0]\nzram-size = ram / 0\n"), 0o644)
	_, errOut, code = cli(t, nil, "setup", "--config", conf, "--dry-run")
	if code != 1 || !strings.Contains(errOut, "division by zero") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("bad config: exit %d %q", code, errOut)
	}
}
