// Package tests drives uzram end to end through its public surfaces: the
// real binary, its NBD socket, and real NBD clients (fio's nbd engine,
// qemu-io, nbdinfo, and nbdclient).
package tests

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// uzramBin is the binary under test, built once by TestMain.
var uzramBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "uzram-tests-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	uzramBin = filepath.Join(dir, "uzram")
	build := exec.Command("go", "build", "-race", "-o", uzramBin, "..")
	if os.Getenv("UZRAM_TEST_NORACE") != "" {
		build = exec.Command("go", "build", "-o", uzramBin, "..")
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building uzram:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is a running `uzram serve`.
type server struct {
	t      testing.TB
	cmd    *exec.Cmd
	Socket string
	Name   string
	mu     sync.Mutex
	out    strings.Builder // stdout: stats
	errOut strings.Builder // stderr: logs
	done   chan error
}

// startServer runs `uzram serve` with args on a fresh socket and waits
// until it accepts connections.
func startServer(t testing.TB, args ...string) *server {
	t.Helper()
	s := launchServer(t, filepath.Join(t.TempDir(), "uzram.sock"), args...)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", s.Socket); err == nil {
			c.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("uzram did not start listening: %s", s.stderr())
		}
		select {
		case err := <-s.done:
			t.Fatalf("uzram exited early: %v: %s", err, s.stderr())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// launchServer starts `uzram serve --socket socket args...` and returns at once.
func launchServer(t testing.TB, socket string, args ...string) *server {
	t.Helper()
	s := &server{t: t, Socket: socket, Name: "uzram0", done: make(chan error, 1)}
	for i, a := range args {
		if a == "--name" && i+1 < len(args) {
			s.Name = args[i+1]
		}
	}
	// The server runs as it does in production, memory locked (mlockall):
	// the store must still give memory back under it.
	full := append([]string{"serve", "--socket", s.Socket}, args...)
	s.cmd = exec.Command(uzramBin, full...)
	stdout, _ := s.cmd.StdoutPipe()
	stderr, _ := s.cmd.StderrPipe()
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start uzram: %v", err)
	}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go s.copy(&pipes, stdout, &s.out)
	go s.copy(&pipes, stderr, &s.errOut)
	go func() { pipes.Wait(); s.done <- s.cmd.Wait() }()
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *server) copy(wg *sync.WaitGroup, r io.Reader, b *strings.Builder) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		s.mu.Lock()
		b.WriteString(sc.Text() + "\n")
		s.mu.Unlock()
	}
}

func (s *server) stdout() string { s.mu.Lock(); defer s.mu.Unlock(); return s.out.String() }
func (s *server) stderr() string { s.mu.Lock(); defer s.mu.Unlock(); return s.errOut.String() }

// stop sends SIGTERM and waits; it fails the test if the exit is not clean.
func (s *server) stop() error {
	if s.cmd.ProcessState != nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Errorf("uzram exited with %v after SIGTERM: %s", err, s.stderr())
		}
		if strings.Contains(s.stderr(), "DATA RACE") {
			s.t.Errorf("race detected in uzram:\n%s", s.stderr())
		}
		return err
	case <-time.After(60 * time.Second):
		s.cmd.Process.Kill()
		s.t.Errorf("uzram did not exit within 60s of SIGTERM")
		return fmt.Errorf("timeout")
	}
}

// uri is the NBD URI of the server's export, for libnbd tools and fio.
func (s *server) uri() string { return fmt.Sprintf("nbd+unix:///%s?socket=%s", s.Name, s.Socket) }

// mmStat asks the server for its stats (SIGUSR1) and returns mm_stat's columns.
func (s *server) stats(t testing.TB) (mm, io []int64) {
	t.Helper()
	before := strings.Count(s.stdout(), "io_stat ")
	s.cmd.Process.Signal(syscall.SIGUSR1)
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(s.stdout(), "io_stat ") == before {
		if time.Now().After(deadline) {
			t.Fatalf("no stats after SIGUSR1: %q", s.stdout())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return lastStat(t, s.stdout(), "mm_stat "), lastStat(t, s.stdout(), "io_stat ")
}

func lastStat(t testing.TB, out, prefix string) []int64 {
	t.Helper()
	var vals []int64
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		vals = vals[:0]
		for _, f := range strings.Fields(line[len(prefix):]) {
			var v int64
			if _, err := fmt.Sscan(f, &v); err != nil {
				t.Fatalf("bad stat line %q", line)
			}
			vals = append(vals, v)
		}
	}
	if vals == nil {
		t.Fatalf("no %q line in %q", prefix, out)
	}
	return vals
}

// need skips the test when a tool is not installed.
func need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; .ci/run should install it", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
}

// run runs a command and fails the test with its output if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
