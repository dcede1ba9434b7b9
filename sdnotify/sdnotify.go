// Package sdnotify speaks systemd's service notification protocol
// (sd_notify(3)) without libsystemd: a service started with Type=notify
// tells the service manager that it is ready, what it is doing and that it
// is stopping by sending one datagram per message to the unix socket named
// by $NOTIFY_SOCKET. The same socket keeps file descriptors for the service
// across its restarts (the file descriptor store: FDSTORE=1 with the
// descriptors attached as SCM_RIGHTS), and the manager hands them back at
// the next start as $LISTEN_FDS, $LISTEN_FDNAMES and $LISTEN_PID
// (sd_listen_fds(3)), which ListenFDs reads.
//
// A message is newline-separated VAR=VALUE assignments, sent as one
// datagram: READY=1, RELOADING=1, STOPPING=1, STATUS=free text,
// WATCHDOG=1, FDSTORE=1 with FDNAME=, FDSTOREREMOVE=1 with FDNAME=. Every
// function here is a no-op returning (false, nil) when $NOTIFY_SOCKET is
// unset, so a daemon calls them unconditionally and runs the same outside
// systemd.
package sdnotify

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Messages of the protocol that carry no value of their own.
const (
	Ready     = "READY=1"
	Reloading = "RELOADING=1"
	Stopping  = "STOPPING=1"
	Watchdog  = "WATCHDOG=1"
)

// socketAddr is $NOTIFY_SOCKET as a unix socket address: a path, or an
// abstract socket written with a leading '@' (which syscall turns into the
// leading NUL byte). Other schemes (vsock:) are not supported.
func socketAddr() (*syscall.SockaddrUnix, error) {
	name := os.Getenv("NOTIFY_SOCKET")
	switch {
	case name == "":
		return nil, nil
	case name[0] == '/' || name[0] == '@':
		return &syscall.SockaddrUnix{Name: name}, nil
	}
	return nil, fmt.Errorf("sdnotify: NOTIFY_SOCKET=%q: only unix socket paths and @abstract names are supported", name)
}

// Notify sends state, one or more newline-separated assignments such as
// "READY=1\nSTATUS=serving", to the service manager. It reports whether a
// manager was there to send to.
func Notify(state string) (bool, error) {
	return send(state, nil)
}

// Status sends STATUS=text: the one-line state `systemctl status` shows.
func Status(text string) (bool, error) {
	return Notify("STATUS=" + strings.ReplaceAll(text, "\n", " "))
}

// send writes state as one datagram, with fds attached as SCM_RIGHTS.
func send(state string, fds []int) (bool, error) {
	addr, err := socketAddr()
	if addr == nil || err != nil {
		return false, err
	}
	s, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("sdnotify: socket: %w", err)
	}
	defer syscall.Close(s)
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	if err := syscall.Sendmsg(s, []byte(state), oob, addr, syscall.MSG_NOSIGNAL); err != nil {
		return false, fmt.Errorf("sdnotify: send %q to %s: %w", firstLine(state), addr.Name, err)
	}
	return true, nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// checkName refuses FDNAME values the manager would: it allows at most 255
// printable ASCII characters other than ':' (LISTEN_FDNAMES's separator).
func checkName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("sdnotify: FDNAME %q: want 1 to 255 characters", name)
	}
	for _, r := range name {
		if r <= ' ' || r >= 0x7f || r == ':' {
			return fmt.Errorf("sdnotify: FDNAME %q: only printable ASCII without ':' or spaces", name)
		}
	}
	return nil
}

// FDStore hands files to the service manager's file descriptor store
// under name (FDSTORE=1, FDNAME=name; the unit needs FileDescriptorStoreMax=
// above 0). The manager keeps its own duplicates, so the caller may close
// its files afterwards; they come back at the next start through
// ListenFDs, each named name. A name may hold several descriptors.
func FDStore(name string, files ...*os.File) (bool, error) {
	if err := checkName(name); err != nil {
		return false, err
	}
	if len(files) == 0 {
		return false, errors.New("sdnotify: FDStore needs at least one file")
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	ok, err := send("FDSTORE=1\nFDNAME="+name, fds)
	runtime.KeepAlive(files) // no finalizer closes a descriptor before it is sent
	return ok, err
}

// FDStoreRemove drops every descriptor stored under name
// (FDSTOREREMOVE=1, FDNAME=name).
func FDStoreRemove(name string) (bool, error) {
	if err := checkName(name); err != nil {
		return false, err
	}
	return Notify("FDSTOREREMOVE=1\nFDNAME=" + name)
}

// listenFDsStart is SD_LISTEN_FDS_START: passed descriptors begin at 3.
const listenFDsStart = 3

// ListenFDs returns the files the service manager passed to this process
// (sockets of socket activation, or what FDStore kept), in order from
// descriptor 3, each named as $LISTEN_FDNAMES says ("unknown" without
// names, as sd_listen_fds_with_names does). It returns nil when nothing was
// passed, or when the variables are meant for another process
// ($LISTEN_PID is not ours). The descriptors are marked close-on-exec. The
// variables are removed from the environment, so that a child or a
// re-executed image does not take the same descriptors again.
func ListenFDs() ([]*os.File, error) {
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	pidText, nText := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if pidText == "" || nText == "" {
		return nil, nil
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil {
		return nil, fmt.Errorf("sdnotify: LISTEN_PID=%q: %w", pidText, err)
	}
	if pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(nText)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("sdnotify: LISTEN_FDS=%q: not a count", nText)
	}
	var names []string
	if s, ok := os.LookupEnv("LISTEN_FDNAMES"); ok {
		names = strings.Split(s, ":")
		if len(names) != n {
			return nil, fmt.Errorf("sdnotify: LISTEN_FDNAMES has %d names for %d descriptors", len(names), n)
		}
	}
	files := make([]*os.File, n)
	for i := range n {
		fd := listenFDsStart + i
		syscall.CloseOnExec(fd)
		name := "unknown"
		if names != nil {
			name = names[i]
		}
		files[i] = os.NewFile(uintptr(fd), name)
	}
	return files, nil
}

// WatchdogInterval is WatchdogSec= of the unit ($WATCHDOG_USEC, when
// $WATCHDOG_PID, if set, is this process): the service must send WATCHDOG=1
// more often than that, or be killed. 0 means no watchdog.
func WatchdogInterval() (time.Duration, error) {
	usec := os.Getenv("WATCHDOG_USEC")
	if usec == "" {
		return 0, nil
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(os.Getpid()) {
		return 0, nil
	}
	n, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("sdnotify: WATCHDOG_USEC=%q: want a positive number of microseconds", usec)
	}
	return time.Duration(n) * time.Microsecond, nil
}
