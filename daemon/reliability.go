package daemon

// Restarts and access control: the first device's contents are saved to
// Config.StateFile at shutdown and restored from it at start (package
// state); device sockets get Config.SocketMode and SocketGroup; TCP listens
// on loopback unless a host is given.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/state"
)

// DefaultSocketMode is a device socket's mode unless widened: only the
// daemon's user may attach (that is, read and write the swap).
const DefaultSocketMode os.FileMode = 0o600

// ListenTCP listens for NBD over TCP. A bare port ("10809" or ":10809")
// means loopback: exposing swap contents to the network must be asked for
// with an explicit host.
func ListenTCP(addr string) (net.Listener, error) {
	addr = strings.TrimSpace(addr)
	if _, err := strconv.ParseUint(strings.TrimPrefix(addr, ":"), 10, 16); err == nil {
		addr = net.JoinHostPort("127.0.0.1", strings.TrimPrefix(addr, ":"))
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("daemon: listen on %s: %w", addr, err)
	}
	return l, nil
}

// ParseSocketMode reads an octal mode such as 0660.
func ParseSocketMode(s string) (os.FileMode, error) {
	if s == "" {
		return DefaultSocketMode, nil
	}
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v&^0o777 != 0 {
		return 0, fmt.Errorf("bad socket mode %q: want octal permission bits like 0660", s)
	}
	if v&0o600 != 0o600 {
		return 0, fmt.Errorf("bad socket mode %q: the owner needs read and write (0600)", s)
	}
	return os.FileMode(v), nil
}

// SetSocketAccess gives a socket its mode and, if group is not empty, its
// group (a name or a numeric id). ListenUnix creates sockets 0600, so this
// only ever widens access, after the socket exists.
func SetSocketAccess(path string, mode os.FileMode, group string) error {
	if group != "" {
		gid, err := lookupGroup(group)
		if err != nil {
			return err
		}
		if err := os.Lchown(path, -1, gid); err != nil {
			return fmt.Errorf("daemon: socket group: %w", err)
		}
	}
	if mode == 0 {
		mode = DefaultSocketMode
	}
	if mode != DefaultSocketMode {
		if err := os.Chmod(path, mode); err != nil {
			return fmt.Errorf("daemon: socket mode: %w", err)
		}
	}
	return nil
}

func lookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("daemon: socket group: %w", err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("daemon: socket group %s: gid %q", group, g.Gid)
	}
	return gid, nil
}

// socketAccess applies the configured access to a device socket.
func (d *Daemon) socketAccess(path string) error {
	return SetSocketAccess(path, d.cfg.SocketMode, d.cfg.SocketGroup)
}

// restore loads the state file into a device that is not yet exported, if
// it is the device the file belongs to. A corrupt or mismatched file is an
// error: starting with empty or wrong contents under a kernel that still
// has swap on this device would hand its processes garbage.
func (d *Daemon) restore(dev *blockdev.Device) error {
	if d.cfg.StateFile == "" || d.cfg.NoDevice || dev.Name() != d.cfg.Device.Name {
		return nil
	}
	start := time.Now()
	sum, found, err := state.LoadFile(d.cfg.StateFile, dev)
	if err != nil {
		return fmt.Errorf("daemon: restore %s: %w (move the file away to start empty)", dev.Name(), err)
	}
	if found {
		d.log.Info("restored device contents", "device", dev.Name(), "file", d.cfg.StateFile,
			"pages", sum.Pages, "bytes", sum.Bytes, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// SaveState writes the first device's contents to the state file. Run calls
// it at shutdown, once every connection has drained. Called on a device in
// use, it saves a snapshot that later writes make stale: only save a device
// that nothing writes to any more.
func (d *Daemon) SaveState() error {
	if d.cfg.StateFile == "" {
		return errors.New("daemon: no state file configured")
	}
	d.mu.Lock()
	e, ok := d.devs[d.cfg.Device.Name]
	if ok {
		e.ops.RLock() // not freed under us by a reset
	}
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("daemon: device %s is gone: nothing saved", d.cfg.Device.Name)
	}
	defer e.ops.RUnlock()
	start := time.Now()
	sum, err := state.SaveFile(d.cfg.StateFile, e.dev)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.log.Info("saved device contents", "device", e.dev.Name(), "file", d.cfg.StateFile,
		"pages", sum.Pages, "bytes", sum.Bytes, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// load restores dev from r (a predecessor's copy of it, in package state's format).
func (d *Daemon) load(dev *blockdev.Device, r io.Reader) error {
	start := time.Now()
	sum, err := state.Load(r, dev)
	if err != nil {
		return fmt.Errorf("daemon: takeover: load %s: %w", dev.Name(), err)
	}
	d.log.Info("restored device contents", "device", dev.Name(), "from", "predecessor",
		"pages", sum.Pages, "bytes", sum.Bytes, "took", time.Since(start).Round(time.Millisecond))
	return nil
}
