package daemon

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Where the kernel tells about NBD devices, swaps and mounts; variables so
// tests can point them at fixtures.
var (
	sysBlock  = "/sys/block"
	procDir   = "/proc"
	procSwaps = "/proc/swaps"
	mountInfo = "/proc/self/mountinfo"
)

// nbdConnected reports whether /dev/nbdN has a server connection: the
// kernel shows its pid file only then.
func nbdConnected(nbd string) bool {
	_, err := os.Stat(filepath.Join(sysBlock, filepath.Base(nbd), "pid"))
	return err == nil
}

// findNBD finds the /dev/nbdN serving export name through one of sockets.
// A recorded attachment (uzram attach) wins while it is connected; else the
// owner of each connected nbdN (its pid file) is matched by command line,
// which finds attachments made by hand with nbd-client while it runs.
func findNBD(recorded, name string, sockets []string) string {
	if recorded != "" && nbdConnected(recorded) {
		return recorded
	}
	pids, _ := filepath.Glob(filepath.Join(sysBlock, "nbd*", "pid"))
	for _, pf := range pids {
		b, err := os.ReadFile(pf)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "cmdline"))
		if err != nil {
			continue
		}
		if nbdClientServes(strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00"), name, sockets) {
			return "/dev/" + filepath.Base(filepath.Dir(pf))
		}
	}
	return ""
}

// nbdClientServes reads an nbd-client command line: it serves name if it
// connects to one of sockets (-unix PATH) and asks for name (-N or -name).
func nbdClientServes(args []string, name string, sockets []string) bool {
	var sock, export string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-unix", "-u", "--unix":
			sock = args[i+1]
		case "-N", "-name", "--name":
			export = args[i+1]
		}
	}
	return export == name && sock != "" && slices.Contains(sockets, sock)
}

// mountPoint is zramctl's MOUNTPOINT for a device: "[SWAP]" if it is an
// active swap, else where it is mounted, else "".
func mountPoint(dev string) string {
	if b, err := os.ReadFile(procSwaps); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) > 0 && f[0] == dev {
				return "[SWAP]"
			}
		}
	}
	b, err := os.ReadFile(mountInfo)
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		f := strings.Fields(sc.Text())
		sep := slices.Index(f, "-")
		if sep < 5 || sep+2 >= len(f) {
			continue
		}
		if unescapeMount(f[sep+2]) == dev {
			return unescapeMount(f[4])
		}
	}
	return ""
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
