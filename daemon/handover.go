package daemon

// Taking over from a running daemon (`uzram serve --takeover`): the new
// process asks the old one, over its control socket, for every device and
// everything a client is connected to, and the old one stops serving
// without closing a single socket. The kernel's nbd driver never sees a
// connection die, so an attached device, swap included, waits out the gap
// instead of failing or stalling for its request timeout
// (docs/reliability.md).
//
//	new: POST /v1/handover on the control socket, saying what it was
//	     started for (the same flags as the old one)
//	old: stops its control API, stops every connection at a request
//	     boundary with its replies sent (nbd.Server.Handover), saves
//	     each device's store into a memfd (package state's format), and
//	     sends an 8-byte header ("UZHO" and the manifest's length) carrying
//	     the sockets and memfds (SCM_RIGHTS), then the manifest (JSON)
//	new: acknowledges with one byte; the old exits and frees its memory
//	new: recreates every device from the manifest and its memfd, serves
//	     the listeners and adopts the connections, unread bytes first
//
// A refusal (other flags, too little memory) comes back as an HTTP error
// before anything stops: the old daemon serves on.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd"
	"github.com/uzram/uzram/blockdev/ublk"
	"github.com/uzram/uzram/hostmem"
	"github.com/uzram/uzram/state"
	"github.com/uzram/uzram/zcomp"
)

const (
	handoverPath  = "/v1/handover"
	handoverMagic = "UZHO"
	// handoverMaxFDs is what one SCM_RIGHTS message carries (the kernel's
	// SCM_MAX_FD is 253): two listeners and the connections.
	handoverMaxFDs = 250
	// handoverWait bounds the successor's wait for the old daemon, which
	// saves the whole store meanwhile (about a second per GiB).
	handoverWait = 5 * time.Minute
)

// handoverManifest says what the files passed with it are, in order: for
// each device its listener (if Socket) and its state (a memfd), then the
// TCP listener (if Listen), then Conns.
type handoverManifest struct {
	PID     int            `json:"pid"`               // the old daemon, which exits once acknowledged
	Version string         `json:"version,omitempty"` // the old daemon's (version.Info's line), for the log
	Devices []handedDevice `json:"devices"`
	Listen  string         `json:"listen,omitempty"`
	Conns   []handedConn   `json:"conns"`
}

// handedDevice is a device as the old daemon ran it.
type handedDevice struct {
	Config blockdev.Config `json:"config"`
	Socket string          `json:"socket,omitempty"`
	NBD    string          `json:"nbd,omitempty"`
	// Ublk is set for a device served as /dev/ublkbN: the old daemon has
	// let its queues go (ublk.Device.Handoff) and the kernel holds its
	// requests until the successor recovers the node.
	Ublk *handedUblk `json:"ublk,omitempty"`
}

type handedUblk struct {
	ID      int           `json:"id"`
	Options *ublk.Options `json:"options"`
}

type handedConn struct {
	Export   string `json:"export"`
	TFlags   uint16 `json:"tflags"`
	Leftover []byte `json:"leftover,omitempty"`
}

// handoverRequest is what the successor was started for: checked before
// anything stops, so a successor with other flags leaves the daemon serving.
type handoverRequest struct {
	NoDevice bool   `json:"no_device"`
	Device   string `json:"device"`
	Socket   string `json:"socket"`
	Listen   string `json:"listen"`
	Ublk     bool   `json:"ublk"`              // the first device is served as /dev/ublkbN
	Version  string `json:"version,omitempty"` // the successor's (version.Info's line), for the log
}

// requestFor is what a daemon configured as cfg serves, as a handoverRequest.
func requestFor(cfg Config) handoverRequest {
	return handoverRequest{NoDevice: cfg.NoDevice, Device: cfg.Device.Name, Socket: cfg.Socket, Listen: cfg.Listen, Ublk: cfg.Ublk != nil, Version: thisVersion()}
}

// canHandOver says why this daemon cannot hand over to a successor started
// for req, before anything stops.
func (d *Daemon) canHandOver(req handoverRequest) error {
	switch {
	case req.NoDevice != d.cfg.NoDevice:
		return fmt.Errorf("the running daemon was started with no_device=%v; start the successor with its flags", d.cfg.NoDevice)
	case !req.NoDevice && req.Device != d.cfg.Device.Name:
		return fmt.Errorf("the running daemon serves device %s, not %s", d.cfg.Device.Name, req.Device)
	case !req.NoDevice && req.Socket != d.cfg.Socket:
		return fmt.Errorf("the running daemon serves %s on %q, not %q", d.cfg.Device.Name, d.cfg.Socket, req.Socket)
	case !req.NoDevice && req.Ublk != (d.cfg.Ublk != nil):
		return fmt.Errorf("the running daemon serves %s with ublk=%v; start the successor with its flags", d.cfg.Device.Name, d.cfg.Ublk != nil)
	case (req.Listen == "") != (d.cfg.Listen == ""):
		return fmt.Errorf("the running daemon listens on TCP %q; the successor is asked for %q", d.cfg.Listen, req.Listen)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return errors.New("the running daemon is shutting down")
	}
	// Each store goes through a memfd, memory too, while every client
	// waits: memory the kernel could only find by swapping to these very
	// devices. So the copies must fit in what is available without that.
	var compr, need int64
	for _, name := range d.order {
		s := d.devs[name].dev.Stats()
		compr += s.ComprDataSize
		need += s.ComprDataSize + stateRecordBytes*(s.PagesStored+s.SamePages)
	}
	need += handoverHeadroom
	if kib, err := hostmem.MeminfoKiB("MemAvailable"); err == nil && kib<<10 < need {
		return fmt.Errorf("carrying %d MiB of stores over needs %d MiB of available memory, and %d MiB are: free some memory or swapoff first",
			compr>>20, need>>20, kib>>10)
	}
	return nil
}

const (
	// stateRecordBytes is a page record's overhead in package state's format.
	stateRecordBytes = 24
	// handoverHeadroom is kept available beyond the stores' copies: the
	// successor's own start, and the kernel's watermarks.
	handoverHeadroom = 64 << 20
)

// handoverHandler answers POST /v1/handover: it takes the connection over
// from HTTP and leaves the handover to Run's loop.
func (d *Daemon) handoverHandler(w http.ResponseWriter, r *http.Request) {
	var req handoverRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		http.Error(w, "bad handover request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := d.canHandOver(req); err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	d.log.Info("takeover asked", "version", thisVersion(), "successor_version", req.Version)
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "handover needs a raw connection", http.StatusInternalServerError)
		return
	}
	nc, _, err := hj.Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return
	}
	select {
	case d.handoverReq <- uc:
	default:
		uc.Write([]byte("HTTP/1.1 409 Conflict\r\nContent-Length: 33\r\n\r\na takeover is already under way\r\n"))
		uc.Close()
	}
}

// handOver runs the old daemon's side once the control API has stopped.
// Whatever happens, the daemon exits afterwards; if the handover fails
// after the connections stopped, they are closed and the first device is
// saved to the state file, if there is one, as a plain stop would.
//
// send delivers the manifest and files to the successor (sendOver,
// reexec) and returns once it has them.
func (d *Daemon) handOver(ctx context.Context, tcp net.Listener, send func(m handoverManifest, files []*os.File) error) (err error) {
	os.Remove(d.cfg.Control) // the successor listens there next
	d.mu.Lock()
	d.closing = true
	entries := make([]*entry, 0, len(d.order))
	for _, name := range d.order {
		entries = append(entries, d.devs[name])
	}
	d.mu.Unlock()
	conns, err := d.srv.Handover(ctx)
	defer func() {
		for _, c := range conns {
			c.File.Close()
		}
		if err != nil && d.cfg.StateFile != "" && !d.cfg.NoDevice {
			if serr := d.SaveState(); serr != nil {
				d.log.Error("handover failed, and so did saving the state file", "err", serr)
			}
		}
	}()
	if err != nil {
		return err
	}
	m := handoverManifest{PID: os.Getpid(), Version: thisVersion()}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, e := range entries {
		hd := handedDevice{Config: e.cfg, NBD: e.nbd}
		if e.ublk != nil {
			// Before the store is copied: from here the kernel holds the
			// node's requests for the successor, nothing changes the store.
			id := e.ublk.ID()
			if err := e.ublk.Handoff(); err != nil {
				return fmt.Errorf("daemon: handover: %s: %w", e.ublk.Path(), err)
			}
			e.ublk, hd.Ublk = nil, &handedUblk{ID: id, Options: e.ublkOpts}
		}
		// Knobs set at runtime: the limit and the primary algorithm.
		hd.Config.MemLimit = e.dev.Stats().MemLimit
		if a := e.dev.Algorithm(); a != hd.Config.Algorithm {
			hd.Config.Algorithm, hd.Config.Params, hd.Config.ParamsText = a, zcomp.Params{}, ""
		}
		if e.l != nil {
			f, err := e.l.(*net.UnixListener).File()
			if err != nil {
				return fmt.Errorf("daemon: handover: %s: %w", e.socket, err)
			}
			files, hd.Socket = append(files, f), e.socket
		}
		f, err := d.saveToMemfd(e.dev)
		if err != nil {
			return err
		}
		files = append(files, f)
		m.Devices = append(m.Devices, hd)
	}
	if tcp != nil {
		f, err := tcp.(*net.TCPListener).File()
		if err != nil {
			return fmt.Errorf("daemon: handover: %s: %w", tcp.Addr(), err)
		}
		files, m.Listen = append(files, f), tcp.Addr().String()
	}
	for _, c := range conns {
		if len(files) == handoverMaxFDs {
			d.log.Warn("too many connections to hand over: the rest are closed", "handed", len(m.Conns))
			break
		}
		files = append(files, c.File)
		m.Conns = append(m.Conns, handedConn{Export: c.Export, TFlags: c.TFlags, Leftover: c.Leftover})
	}
	if err := send(m, files); err != nil {
		return err
	}
	d.mu.Lock()
	d.handedOff = true // the sockets' paths are the successor's now
	d.mu.Unlock()
	d.log.Info("handed over", "devices", len(m.Devices), "connections", len(m.Conns))
	return nil
}

// sendOver sends the manifest and files over the successor's control
// connection and waits for its acknowledgement.
func sendOver(uc *net.UnixConn) func(handoverManifest, []*os.File) error {
	return func(m handoverManifest, files []*os.File) error {
		body, err := json.Marshal(m)
		if err != nil {
			return err
		}
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		hdr := binary.BigEndian.AppendUint32([]byte(handoverMagic), uint32(len(body)))
		uc.SetDeadline(time.Now().Add(time.Minute))
		if _, _, err := uc.WriteMsgUnix(hdr, unix.UnixRights(fds...), nil); err != nil {
			return fmt.Errorf("daemon: handover: send sockets: %w", err)
		}
		if _, err := uc.Write(body); err != nil {
			return fmt.Errorf("daemon: handover: send manifest: %w", err)
		}
		if _, err := io.ReadFull(uc, make([]byte, 1)); err != nil {
			return fmt.Errorf("daemon: handover: no acknowledgement from the successor: %w", err)
		}
		return nil
	}
}

// saveToMemfd writes dev's store into a memfd, read back from the start.
func (d *Daemon) saveToMemfd(dev *blockdev.Device) (*os.File, error) {
	fd, err := unix.MemfdCreate("uzram-"+dev.Name(), unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("daemon: handover: memfd for %s: %w", dev.Name(), err)
	}
	f := os.NewFile(uintptr(fd), "uzram-"+dev.Name())
	start := time.Now()
	sum, err := state.Save(f, dev)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("daemon: handover: save %s: %w", dev.Name(), err)
	}
	d.log.Info("store saved for the successor", "device", dev.Name(), "pages", sum.Pages, "bytes", sum.Bytes, "took", time.Since(start))
	return f, nil
}

// takeover is what the successor received.
type takeover struct {
	m     handoverManifest
	files []*os.File // in the manifest's order; nil once taken
}

// receiveHandover asks the daemon on cfg.Control to hand over to a daemon
// configured as cfg, and returns what it sent.
func receiveHandover(cfg Config) (*takeover, error) {
	control := cfg.Control
	if control == "" {
		return nil, errors.New("--takeover needs the control socket the running daemon answers on")
	}
	body, err := json.Marshal(requestFor(cfg))
	if err != nil {
		return nil, err
	}
	nc, err := net.DialTimeout("unix", control, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("takeover: no daemon answers on %s: %w", control, err)
	}
	uc := nc.(*net.UnixConn)
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(handoverWait))
	if _, err := fmt.Fprintf(uc, "POST %s HTTP/1.1\r\nHost: uzram\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		handoverPath, len(body), body); err != nil {
		return nil, fmt.Errorf("takeover: %w", err)
	}
	hdr := make([]byte, 8)
	oob := make([]byte, unix.CmsgSpace(4*handoverMaxFDs))
	n, oobn, _, _, err := uc.ReadMsgUnix(hdr, oob)
	if err != nil {
		return nil, fmt.Errorf("takeover: %w", err)
	}
	t := &takeover{}
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("takeover: %w", err)
		}
		for _, msg := range msgs {
			fds, err := unix.ParseUnixRights(&msg)
			if err != nil {
				return nil, fmt.Errorf("takeover: %w", err)
			}
			for _, fd := range fds {
				t.files = append(t.files, os.NewFile(uintptr(fd), "handed"))
			}
		}
	}
	fail := func(err error) (*takeover, error) { t.close(); return nil, err }
	if strings.HasPrefix(string(hdr[:n]), "HTTP/") {
		rest, _ := io.ReadAll(io.LimitReader(uc, 4096))
		return fail(fmt.Errorf("takeover refused: %s", refusal(string(hdr[:n])+string(rest))))
	}
	if _, err := io.ReadFull(uc, hdr[n:]); err != nil {
		return fail(fmt.Errorf("takeover: %w", err))
	}
	if string(hdr[:4]) != handoverMagic {
		return fail(fmt.Errorf("takeover: %s did not answer with a handover", control))
	}
	manifest := make([]byte, binary.BigEndian.Uint32(hdr[4:]))
	if _, err := io.ReadFull(uc, manifest); err != nil {
		return fail(fmt.Errorf("takeover: read manifest: %w", err))
	}
	if err := json.Unmarshal(manifest, &t.m); err != nil {
		return fail(fmt.Errorf("takeover: manifest: %w", err))
	}
	want := len(t.m.Conns)
	for _, d := range t.m.Devices {
		want++ // its state
		if d.Socket != "" {
			want++
		}
	}
	if t.m.Listen != "" {
		want++
	}
	if len(t.files) != want {
		return fail(fmt.Errorf("takeover: %d files came for a manifest of %d", len(t.files), want))
	}
	if _, err := uc.Write([]byte{'k'}); err != nil {
		return fail(fmt.Errorf("takeover: acknowledge: %w", err))
	}
	return t, nil
}

// refusal is the last non-empty line of an HTTP error reply: its body.
func refusal(reply string) string {
	lines := strings.Split(strings.TrimSpace(reply), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// takenDevice is a handed device with its files.
type takenDevice struct {
	handedDevice
	l     net.Listener // nil without a socket
	state *os.File     // its store, in package state's format
}

// split pairs the files with the manifest: the devices, and the TCP
// listener (nil when none came). The connections stay for adopt.
func (t *takeover) split() (devs []takenDevice, tcp net.Listener, err error) {
	i := 0
	take := func() *os.File {
		f := t.files[i]
		t.files[i] = nil
		i++
		return f
	}
	listener := func(what string) (net.Listener, error) {
		f := take()
		defer f.Close()
		l, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("takeover: %s listener: %w", what, err)
		}
		if ul, ok := l.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false) // as ListenUnix leaves it
		}
		return l, nil
	}
	for _, hd := range t.m.Devices {
		td := takenDevice{handedDevice: hd}
		if hd.Socket != "" {
			if td.l, err = listener(hd.Socket); err != nil {
				return nil, nil, err
			}
		}
		td.state = take()
		devs = append(devs, td)
	}
	if t.m.Listen != "" {
		if tcp, err = listener(t.m.Listen); err != nil {
			return nil, nil, err
		}
	}
	return devs, tcp, nil
}

// adopt serves the handed connections on srv.
func (t *takeover) adopt(srv *nbd.Server) (n int, err error) {
	first := len(t.files) - len(t.m.Conns)
	for i, c := range t.m.Conns {
		f := t.files[first+i]
		t.files[first+i] = nil
		if e := srv.Adopt(nbd.HandedConn{File: f, Export: c.Export, TFlags: c.TFlags, Leftover: c.Leftover}); e != nil {
			err = errors.Join(err, e)
			continue
		}
		n++
	}
	return n, err
}

// waitPredecessor waits, at most max, for the old daemon to exit: gone, or
// a zombie its parent has yet to reap (which holds no memory).
func (t *takeover) waitPredecessor(max time.Duration) {
	for deadline := time.Now().Add(max); t.m.PID > 0 && time.Now().Before(deadline); {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", t.m.PID))
		if err != nil {
			return
		}
		// "pid (comm) S ...": the state follows the last ')'.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// close closes whatever was not taken.
func (t *takeover) close() {
	for _, f := range t.files {
		if f != nil {
			f.Close()
		}
	}
}

func (d *Daemon) isHandedOff() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.handedOff
}

// restoreHandover runs the successor's side: it recreates every device the
// old daemon ran, with its contents, listener and attachment, then adopts
// its connections. It returns the device the flags name (nil with
// --no-device) and the TCP listener, if one came.
func (d *Daemon) restoreHandover(t *takeover) (first *entry, tcp net.Listener, err error) {
	defer t.close()
	devs, tcp, err := t.split()
	if err != nil {
		return nil, nil, fmt.Errorf("daemon: %w", err)
	}
	defer func() {
		for _, td := range devs {
			td.state.Close()
		}
	}()
	// Its stores are freed as it exits: loading before that would hold
	// each store twice, beside its copy. (A re-exec freed them already.)
	if t.m.PID != os.Getpid() {
		t.waitPredecessor(30 * time.Second)
	}
	start := time.Now()
	for _, td := range devs {
		sp := addSpec{cfg: td.Config, recoverID: -1, socket: td.Socket, inherited: td.l, from: td.state}
		if td.Ublk != nil {
			sp.ublk, sp.recoverID = td.Ublk.Options, td.Ublk.ID
		}
		e, err := d.add(sp)
		if err != nil {
			return nil, nil, fmt.Errorf("daemon: takeover: %w", err)
		}
		e.nbd = td.NBD
		if !d.cfg.NoDevice && e.dev.Name() == d.cfg.Device.Name {
			first = e
		}
	}
	n, err := t.adopt(d.srv)
	if err != nil {
		d.log.Warn("takeover: connections dropped", "err", err)
	}
	d.log.Info("took over", "devices", len(devs), "connections", n, "took", time.Since(start).Round(time.Millisecond),
		"version", thisVersion(), "predecessor_version", t.m.Version)
	return first, tcp, nil
}

// reexecEnv lists the files a daemon that re-executed itself inherits: the
// manifest's memfd first, then the manifest's files in order.
const reexecEnv = "UZRAM_HANDOVER_FDS"

// reexec hands everything over to a new image of exe in this very process
// (SIGUSR2): the PID stays, so a service manager keeps tracking the daemon
// (systemd: ExecReload=kill -USR2 $MAINPID). It returns only on failure.
func reexec(exe string) func(handoverManifest, []*os.File) error {
	return func(m handoverManifest, files []*os.File) error {
		body, err := json.Marshal(m)
		if err != nil {
			return err
		}
		fd, err := unix.MemfdCreate("uzram-handover", 0) // inherited: no MFD_CLOEXEC
		if err != nil {
			return fmt.Errorf("daemon: re-exec: memfd: %w", err)
		}
		mf := os.NewFile(uintptr(fd), "uzram-handover")
		defer mf.Close()
		if _, err := mf.Write(body); err != nil {
			return fmt.Errorf("daemon: re-exec: manifest: %w", err)
		}
		fds := []string{strconv.Itoa(fd)}
		for _, f := range files {
			n := int(f.Fd())
			if _, err := unix.FcntlInt(uintptr(n), unix.F_SETFD, 0); err != nil { // keep it across exec
				return fmt.Errorf("daemon: re-exec: %w", err)
			}
			fds = append(fds, strconv.Itoa(n))
		}
		env := []string{reexecEnv + "=" + strings.Join(fds, ",")}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, reexecEnv+"=") {
				env = append(env, kv)
			}
		}
		// The calling thread's policy carries into the new image's first
		// thread, and on to the threads it starts: real-time is for the new
		// image's own watcher to decide.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_ = unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_NORMAL}, 0)
		err = syscall.Exec(exe, os.Args, env)
		return fmt.Errorf("daemon: re-exec %s: %w", exe, err)
	}
}

// inherited reads what a previous image of this process handed over, if
// it re-executed into this one (nil otherwise).
func inherited() (*takeover, error) {
	list := os.Getenv(reexecEnv)
	if list == "" {
		return nil, nil
	}
	os.Unsetenv(reexecEnv) // not for our children
	t := &takeover{}
	var mf *os.File
	for i, s := range strings.Split(list, ",") {
		fd, err := strconv.Atoi(s)
		if err != nil || fd < 3 {
			t.close()
			return nil, fmt.Errorf("daemon: re-exec: bad %s %q", reexecEnv, list)
		}
		unix.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "handed")
		if i == 0 {
			mf = f
		} else {
			t.files = append(t.files, f)
		}
	}
	defer mf.Close()
	if _, err := mf.Seek(0, io.SeekStart); err != nil {
		t.close()
		return nil, fmt.Errorf("daemon: re-exec: manifest: %w", err)
	}
	if err := json.NewDecoder(mf).Decode(&t.m); err != nil {
		t.close()
		return nil, fmt.Errorf("daemon: re-exec: manifest: %w", err)
	}
	return t, nil
}
