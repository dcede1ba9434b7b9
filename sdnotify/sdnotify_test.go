package sdnotify

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeManager is a service manager's notify socket: a unixgram socket that
// reads datagrams and the descriptors they carry.
type fakeManager struct {
	t *testing.T
	c *net.UnixConn
}

func newFakeManager(t *testing.T, name string) *fakeManager {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return &fakeManager{t: t, c: c}
}

// recv returns the next datagram and the descriptors attached to it.
func (m *fakeManager) recv() (string, []int) {
	m.t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, 1024)
	m.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, _, _, err := m.c.ReadMsgUnix(buf, oob)
	if err != nil {
		m.t.Fatal(err)
	}
	var fds []int
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		m.t.Fatal(err)
	}
	for _, msg := range msgs {
		rights, err := syscall.ParseUnixRights(&msg)
		if err != nil {
			m.t.Fatal(err)
		}
		fds = append(fds, rights...)
	}
	return string(buf[:n]), fds
}

func TestNotifyWithoutManager(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	for _, f := range []func() (bool, error){
		func() (bool, error) { return Notify(Ready) },
		func() (bool, error) { return Status("x") },
		func() (bool, error) { return FDStore("x", os.Stdin) },
		func() (bool, error) { return FDStoreRemove("x") },
	} {
		if sent, err := f(); sent || err != nil {
			t.Errorf("without NOTIFY_SOCKET: sent %v, err %v; want a silent no-op", sent, err)
		}
	}
}

func TestNotifyMessages(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify"),
		"@uzram-sdnotify-test-" + strconv.Itoa(os.Getpid()), // an abstract socket, as systemd uses for user managers
	} {
		m := newFakeManager(t, name)
		if sent, err := Notify(Ready + "\nSTATUS=serving"); !sent || err != nil {
			t.Fatalf("Notify on %s: sent %v, err %v", name, sent, err)
		}
		if got, _ := m.recv(); got != "READY=1\nSTATUS=serving" {
			t.Errorf("got %q", got)
		}
		if _, err := Status("two\nlines"); err != nil {
			t.Fatal(err)
		}
		if got, _ := m.recv(); got != "STATUS=two lines" {
			t.Errorf("status: got %q; a newline would start a new assignment", got)
		}
	}
}

func TestNotifyBadSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if _, err := Notify(Ready); err == nil || !strings.Contains(err.Error(), "vsock") {
		t.Errorf("vsock address: %v; want an error naming it", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	if sent, err := Notify(Ready); sent || err == nil {
		t.Errorf("nobody listening: sent %v, err %v; want an error", sent, err)
	}
}

func TestFDStore(t *testing.T) {
	m := newFakeManager(t, filepath.Join(t.TempDir(), "notify"))
	f, err := os.CreateTemp(t.TempDir(), "stored")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if sent, err := FDStore("dev-uzram0", f); !sent || err != nil {
		t.Fatalf("FDStore: sent %v, err %v", sent, err)
	}
	msg, fds := m.recv()
	if msg != "FDSTORE=1\nFDNAME=dev-uzram0" || len(fds) != 1 {
		t.Fatalf("got %q with %d descriptors", msg, len(fds))
	}
	// The manager's copy is the same open file: a write through it shows.
	kept := os.NewFile(uintptr(fds[0]), "kept")
	defer kept.Close()
	if _, err := kept.WriteString("through the store"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f.Name()); string(b) != "through the store" {
		t.Errorf("the stored descriptor is not the file: read %q", b)
	}
	if _, err := FDStoreRemove("dev-uzram0"); err != nil {
		t.Fatal(err)
	}
	if msg, fds := m.recv(); msg != "FDSTOREREMOVE=1\nFDNAME=dev-uzram0" || len(fds) != 0 {
		t.Errorf("remove: got %q with %d descriptors", msg, len(fds))
	}
	for _, bad := range []string{"", "a:b", "with space", strings.Repeat("x", 256)} {
		if _, err := FDStore(bad, f); err == nil {
			t.Errorf("FDNAME %q accepted", bad)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	for _, c := range []struct {
		usec, pid string
		want      time.Duration
		bad       bool
	}{
		{"", "", 0, false},
		{"30000000", "", 30 * time.Second, false},
		{"30000000", strconv.Itoa(os.Getpid()), 30 * time.Second, false},
		{"30000000", "1", 0, false}, // another process's watchdog
		{"0", "", 0, true},
		{"soon", "", 0, true},
	} {
		t.Setenv("WATCHDOG_USEC", c.usec)
		t.Setenv("WATCHDOG_PID", c.pid)
		got, err := WatchdogInterval()
		if got != c.want || (err != nil) != c.bad {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, %v; want %v, error %v", c.usec, c.pid, got, err, c.want, c.bad)
		}
	}
}

// TestListenFDs runs this test binary again as a child that got two files
// at descriptors 3 and 4, as the service manager passes them.
func TestListenFDs(t *testing.T) {
	if os.Getenv("SDNOTIFY_CHILD") == "1" {
		listenChild()
		return
	}
	dir := t.TempDir()
	var files []*os.File
	for _, name := range []string{"a", "b"} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	for _, c := range []struct {
		env  []string
		want string
	}{
		{[]string{"LISTEN_FDS=2", "LISTEN_FDNAMES=ctl:dev-uzram0"}, "ctl dev-uzram0"},
		{[]string{"LISTEN_FDS=2"}, "unknown unknown"},
		{[]string{"LISTEN_FDS=2", "LISTEN_PID=1"}, "none"}, // meant for another process
		{[]string{"LISTEN_FDS=2", "LISTEN_FDNAMES=only-one"}, "error"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestListenFDs$")
		cmd.Env = append(os.Environ(), "SDNOTIFY_CHILD=1")
		cmd.Env = append(cmd.Env, c.env...)
		cmd.ExtraFiles = files
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", c.env, err, out)
		}
		if !strings.Contains(string(out), "fds: "+c.want+"\n") {
			t.Errorf("%v: want fds: %s, got:\n%s", c.env, c.want, out)
		}
	}
}

// listenChild prints what ListenFDs returned and checks what it promises.
func listenChild() {
	if os.Getenv("LISTEN_PID") == "" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	files, err := ListenFDs()
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if os.Getenv(v) != "" {
			os.Stdout.WriteString(v + " left in the environment\n")
		}
	}
	switch {
	case err != nil:
		os.Stdout.WriteString("fds: error\n")
		return
	case files == nil:
		os.Stdout.WriteString("fds: none\n")
		return
	}
	var names []string
	for i, f := range files {
		// Each is the file the parent passed: a write lands in it.
		if f.Fd() != uintptr(3+i) {
			os.Stdout.WriteString("wrong descriptor order\n")
		}
		if _, err := f.WriteString("child"); err != nil {
			os.Stdout.WriteString("not writable: " + err.Error() + "\n")
		}
		flags, _ := fcntl(int(f.Fd()), syscall.F_GETFD)
		if flags&syscall.FD_CLOEXEC == 0 {
			os.Stdout.WriteString("not close-on-exec\n")
		}
		names = append(names, f.Name())
	}
	os.Stdout.WriteString("fds: " + strings.Join(names, " ") + "\n")
}

func fcntl(fd, cmd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
