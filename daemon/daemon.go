// Package daemon runs uzram's server process: it hosts any number of
// devices, each exported under its name and served on its own unix socket
// (and on every other socket too: the NBD server looks exports up by name),
// answers the control API (control.Manager) on a unix socket, optionally
// serves Prometheus metrics, makes the process safe to be swap (swapsafe),
// prints stats on SIGUSR1 and at exit, and shuts down cleanly on
// SIGINT/SIGTERM: stop accepting, finish in-flight requests, remove the
// sockets.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd"
	"github.com/uzram/uzram/blockdev/ublk"
	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/recompress"
	"github.com/uzram/uzram/sizes"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/swapsafe"
	"github.com/uzram/uzram/zcomp"
)

// Config is everything `uzram serve` was asked for.
type Config struct {
	Device   blockdev.Config // the device to start with, unless NoDevice
	NoDevice bool            // start empty; devices come through the control API
	// Ublk, if set, serves the first device as /dev/ublkbN instead of on
	// Socket.
	Ublk   *ublk.Options
	Socket string // the first device's unix socket; "" for none
	// SocketDir holds the sockets of devices created at runtime
	// (SocketDir/NAME.sock); "" means SocketDirFor(Socket).
	SocketDir string
	Listen    string // TCP host:port serving every export; "" for none
	// Control is the control API's unix socket; "" for none. If
	// ControlOptional, a control socket already in use by another daemon is
	// a warning rather than an error, so that two daemons started the old
	// way (one device each, same directory) still both run.
	Control         string
	ControlOptional bool
	Metrics         string // Prometheus listen address; "" for none
	Swapsafe        swapsafe.Options
	Server          nbd.ServerOptions
	Stdout          io.Writer // stats go here
	Logger          *slog.Logger
	// Ready, if set, is called once the sockets accept connections.
	Ready func()

	// StateFile, if set, holds the first device's contents across restarts:
	// restored at start, saved at shutdown (reliability.go).
	StateFile string
	// Takeover starts by taking the device, its sockets and its live
	// connections over from the daemon answering on Control (handover.go).
	Takeover bool
	// SocketMode and SocketGroup widen device sockets beyond 0600 and the
	// daemon's group (reliability.go).
	SocketMode  os.FileMode
	SocketGroup string

	// RecompAlgorithms are set on the first device (zram's recomp_algorithm).
	RecompAlgorithms []recompress.Algorithm
	// AutoRecompress, if set, runs the background recompression policy on
	// every device (beyond zram; off by default).
	AutoRecompress *recompress.Policy
}

// SocketPath is the default socket of a device.
func SocketPath(name string) string { return filepath.Join(control.DefaultSocketDir, name+".sock") }

// SocketDirFor is where the sockets of devices created at runtime go unless
// told: beside the first device's socket, or in control.DefaultSocketDir
// when there is none.
func SocketDirFor(socket string) string {
	if socket == "" {
		return control.DefaultSocketDir
	}
	return filepath.Dir(socket)
}

// Daemon is a running server: its devices, their sockets, the NBD server.
// It implements control.Manager.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	srv     *nbd.Server
	metrics *Metrics
	heap    *heapReturn // prefault.go

	mu      sync.Mutex
	devs    map[string]*entry
	order   []string
	closing bool
	// fatal receives the first error of a listener the daemon did not close.
	fatal chan error
	// handoverReq receives a successor's control connection (handover.go);
	// handedOff is set once the successor has the sockets, whose paths are
	// then not ours to remove.
	handoverReq chan *net.UnixConn
	handedOff   bool
	// ublkCtl is /dev/ublk-control, opened for the first ublk device.
	ublkCtl *ublk.Control
	// stopReq receives `uzram stop`'s request (stop.go).
	stopReq chan stopRequest
}

// entry is one device and what the daemon keeps beside it.
type entry struct {
	dev     *blockdev.Device
	cfg     blockdev.Config // as created: a successor recreates the device from it
	socket  string          // "" if it has none of its own
	l       net.Listener
	nbd     string // /dev/nbdN recorded by `uzram attach`
	removed bool   // its listener was closed on purpose: not a failure
	// ops is held shared by knob calls made outside mu and exclusively to
	// close the device, so a reset never frees a device under a knob.
	ops sync.RWMutex
	// policy is the background recompression, if the daemon runs one.
	policy *recompress.Runner
	// ublk serves the device as /dev/ublkbN (ublkOpts as asked); nil for
	// NBD, and once handed to a successor.
	ublk     *ublk.Device
	ublkOpts *ublk.Options
}

// close stops the device's background work and its ublk node, and frees
// it.
func (e *entry) close() error {
	if e.policy != nil {
		e.policy.Stop()
	}
	var err error
	if e.ublk != nil {
		err = e.ublk.Stop()
		e.ublk = nil
	}
	return errors.Join(err, e.dev.Close())
}

// Run serves until ctx is done or SIGINT/SIGTERM arrives: it makes the
// devices and listens (listen), serves until told to stop (serveUntilStop),
// then shuts down or hands over (shutDown).
func Run(ctx context.Context, cfg Config) error {
	d := newDaemon(cfg)
	d.log.Info("starting", "version", thisVersion())
	defer d.closeAll()
	defer d.startHeapReturn()()    // prefault.go: the Go heap shrinks back after a big TRIM
	exe, exeErr := os.Executable() // now: an upgrade may replace the file later
	ls := &listeners{}
	defer ls.close(d)
	if err := d.listen(ls); err != nil {
		return err
	}
	if d.cfg.Ready != nil {
		d.cfg.Ready()
	}
	defer d.startNotify()() // notify.go: READY=1, STATUS=, WATCHDOG=1 under systemd
	// Caught until Run returns: a second SIGTERM must not kill a draining daemon.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	return d.shutDown(ls, d.serveUntilStop(ctx, sigs, exe, exeErr))
}

// newDaemon fills cfg's defaults, makes the process safe to be swap and
// builds the daemon, with no device or socket yet.
func newDaemon(cfg Config) *Daemon {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.SocketDir == "" {
		cfg.SocketDir = SocketDirFor(cfg.Socket)
	}
	if cfg.Swapsafe.OnRealtime == nil {
		cfg.Swapsafe.OnRealtime = func(on bool, free uint64) {
			if on {
				log.Info("free memory short: server threads now SCHED_RR (the allocator's reserve)", "free_mib", free>>20)
			} else {
				log.Info("free memory back: server threads now SCHED_OTHER", "free_mib", free>>20)
			}
		}
	}
	for _, err := range swapsafe.Apply(cfg.Swapsafe) {
		log.Warn("running without a swap-safety measure", "err", err)
	}
	if cfg.Swapsafe.Mlock {
		prepareRuntime() // prefault.go: threads, stacks and heap faulted in now
	}
	cfg.Server.Logger = log
	metrics := NewMetrics()
	if cfg.Metrics != "" {
		// Latency histograms cost a clock read per request: only when asked.
		cfg.Server.Observe = metrics.Observe
	}
	heap := &heapReturn{}
	cfg.Server.ConnEnded = func() { heap.connEnded.Store(true) }
	return &Daemon{
		cfg: cfg, log: log, srv: nbd.NewServer(cfg.Server), metrics: metrics, heap: heap,
		devs: map[string]*entry{}, fatal: make(chan error, 1), handoverReq: make(chan *net.UnixConn, 1),
		stopReq: make(chan stopRequest),
	}
}

// listeners are what Run serves besides the devices' own sockets.
type listeners struct {
	tcp     net.Listener // --listen: every export; handed over by a predecessor, if it had one
	ctl     *http.Server // the control API, if its socket could be had
	ctlPath string       // its socket, removed at exit unless handed over
	met     *http.Server // Prometheus metrics, if asked for
}

// close closes the TCP listener and removes the control socket; Run's
// shutdown has stopped the servers.
func (ls *listeners) close(d *Daemon) {
	if ls.ctlPath != "" && !d.isHandedOff() {
		os.Remove(ls.ctlPath)
	}
	if ls.tcp != nil {
		ls.tcp.Close()
	}
}

// listen makes the devices, taken over or the one the flags ask for, and
// starts serving them and the control API and metrics.
func (d *Daemon) listen(ls *listeners) error {
	cfg, log := d.cfg, d.log
	tcpL, err := d.startDevices()
	if err != nil {
		return err
	}
	ls.tcp = tcpL
	if cfg.Listen != "" {
		l := tcpL
		if l == nil {
			var err error
			if l, err = ListenTCP(cfg.Listen); err != nil { // a bare port: loopback only
				return err
			}
		}
		ls.tcp = l
		log.Info("serving every export", "addr", l.Addr().String())
		go d.serve(l, nil)
	}
	if cfg.Control != "" {
		l, err := ListenUnix(cfg.Control)
		switch {
		case err != nil && cfg.ControlOptional:
			log.Warn("no control socket: devices cannot be managed at runtime", "err", err)
		case err != nil:
			return err
		default:
			ls.ctlPath = cfg.Control
			mux := http.NewServeMux()
			mux.HandleFunc("POST "+handoverPath, d.handoverHandler)
			mux.Handle("/", control.Handler(d))
			ls.ctl = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				if err := ls.ctl.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
					d.fail(fmt.Errorf("daemon: control socket: %w", err))
				}
			}()
			log.Info("control API", "socket", cfg.Control)
		}
	}
	if cfg.Metrics != "" {
		addr := MetricsAddr(cfg.Metrics)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("daemon: metrics: listen on %s: %w", addr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", d.metricsHandler())
		ls.met = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := ls.met.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.fail(fmt.Errorf("daemon: metrics: %w", err))
			}
		}()
		log.Info("metrics", "addr", l.Addr().String())
	}
	if cfg.Socket == "" && cfg.Listen == "" && ls.ctl == nil {
		return errors.New("daemon: nothing to listen on: give --socket, --listen or a control socket")
	}
	return nil
}

// startDevices makes the devices: every one a predecessor hands over
// (re-exec or --takeover), else the one the flags ask for. It returns the
// predecessor's TCP listener, if it had one.
func (d *Daemon) startDevices() (tcpL net.Listener, err error) {
	cfg := d.cfg
	var first *entry // the device the flags make
	handed, err := inherited()
	if err != nil {
		return nil, err
	}
	if handed == nil && cfg.Takeover {
		if handed, err = receiveHandover(cfg); err != nil {
			return nil, fmt.Errorf("daemon: %w", err)
		}
	}
	if handed != nil {
		if first, tcpL, err = d.restoreHandover(handed); err != nil {
			return nil, err
		}
	} else if !cfg.NoDevice {
		if first, err = d.add(addSpec{cfg: cfg.Device, ublk: cfg.Ublk, recoverID: -1, socket: cfg.Socket}); err != nil {
			return nil, err
		}
	}
	if first != nil {
		for _, a := range cfg.RecompAlgorithms {
			if err := a.Apply(first.dev); err != nil {
				return tcpL, fmt.Errorf("daemon: %s: %w", first.dev.Name(), err)
			}
		}
	} else if (cfg.Socket != "" || cfg.Ublk != nil) && !cfg.NoDevice {
		return tcpL, fmt.Errorf("daemon: takeover: the running daemon had no device %s", cfg.Device.Name)
	} else if cfg.Socket != "" {
		return tcpL, errors.New("daemon: a socket was given but no device to serve on it")
	}
	return tcpL, nil
}

// stop is why serveUntilStop returned.
type stop struct {
	err       error         // a listener failed
	successor *net.UnixConn // a --takeover successor asked for everything
	upgrade   bool          // SIGUSR2: re-execute in place
	exe       string        // the binary to re-execute
}

// serveUntilStop serves until ctx ends, a signal or a successor asks the
// daemon to stop, or a listener fails; SIGUSR1 prints stats meanwhile.
func (d *Daemon) serveUntilStop(ctx context.Context, sigs <-chan os.Signal, exe string, exeErr error) stop {
	for {
		select {
		case successor := <-d.handoverReq:
			d.log.Info("handing over to a successor")
			return stop{successor: successor}
		case s := <-sigs:
			if s == syscall.SIGUSR1 {
				d.printStats()
				continue
			}
			if s == syscall.SIGUSR2 {
				err := exeErr
				if err == nil {
					err = d.canHandOver(requestFor(d.cfg)) // the same flags: checks only memory and state
				}
				if err != nil {
					d.log.Error("SIGUSR2: not re-executing", "err", err)
					continue
				}
				d.log.Info("SIGUSR2: re-executing in place", "binary", exe, "version", thisVersion(), "new_version", fileVersion(exe))
				return stop{upgrade: true, exe: exe}
			}
			if why := d.refuseSignalStop(); why != "" {
				d.log.Error("not stopping: swapoff or umount it first, or `uzram stop --force`", "signal", s.String(), "busy", why)
				continue
			}
			d.log.Info("shutting down", "signal", s.String())
			return stop{}
		case r := <-d.stopReq:
			d.log.Info("shutting down: uzram stop", "force", r.force)
			return stop{}
		case <-ctx.Done():
			return stop{}
		case err := <-d.fatal:
			return stop{err: err}
		}
	}
}

// shutDown stops the control API and metrics, then hands everything over
// (to a successor, or to a new image of the binary) or drains every
// connection, saves the state file and prints the stats.
func (d *Daemon) shutDown(ls *listeners, st stop) error {
	d.notifyStop(st) // notify.go: STOPPING=1, or RELOADING=1 before a re-exec
	// Stop taking control requests first, so no device appears or goes while
	// the NBD server drains.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ls.ctl != nil {
		ls.ctl.Shutdown(sctx)
	}
	if ls.met != nil {
		ls.met.Shutdown(sctx)
	}
	if st.upgrade {
		err := d.handOver(sctx, ls.tcp, reexec(st.exe)) // returns only on failure
		d.log.Error("re-exec failed: connections closed; start again", "err", err)
		return err
	}
	if st.successor != nil {
		// The state file is written before anything is sent: if the
		// handover fails, this was a plain restart.
		err := d.handOver(sctx, ls.tcp, sendOver(st.successor))
		st.successor.Close()
		if err != nil {
			d.log.Error("handover failed: connections closed; start again from the state file", "err", err)
			return err
		}
		return nil
	}
	runErr := st.err
	d.mu.Lock()
	d.closing = true
	d.mu.Unlock()
	if err := d.srv.Shutdown(sctx); err != nil && runErr == nil {
		runErr = err
	}
	if d.cfg.StateFile != "" && !d.cfg.NoDevice {
		// Every connection has drained: nothing acknowledged is missing.
		if err := d.SaveState(); err != nil && runErr == nil {
			runErr = err
		}
	}
	d.printStats()
	return runErr
}

func (d *Daemon) fail(err error) {
	select {
	case d.fatal <- err:
	default:
	}
}

// serve runs the NBD server on l; e is the device owning l, if any.
func (d *Daemon) serve(l net.Listener, e *entry) {
	err := d.srv.Serve(l)
	d.mu.Lock()
	deliberate := d.closing || e != nil && e.removed
	d.mu.Unlock()
	if err != nil && !deliberate {
		d.fail(err)
	}
}

// closeAll frees every device and removes its socket; the server is down.
func (d *Daemon) closeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closing = true
	for _, name := range d.order {
		e := d.devs[name]
		if e.l != nil {
			e.l.Close()
			if !d.handedOff {
				os.Remove(e.socket)
			}
		}
		e.ops.Lock() // a knob call that outlived the control server's shutdown
		if err := e.close(); err != nil {
			d.log.Warn("closing a device", "device", name, "err", err)
		}
		e.ops.Unlock()
	}
	d.devs, d.order = map[string]*entry{}, nil
	d.closeUblkLocked()
}

func (d *Daemon) printStats() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, name := range d.order {
		dev := d.devs[name].dev
		s := dev.Stats()
		fmt.Fprintf(d.cfg.Stdout, "device %s\nmm_stat %sio_stat %s", dev.Name(), s.MMStat(), s.IOStat())
	}
}

// namePattern keeps names usable as socket file names and NBD export names.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// addSpec is a device to make and how to serve it.
type addSpec struct {
	cfg blockdev.Config
	// ublk, if set, serves it as /dev/ublkbN; recoverID >= 0 takes over
	// that existing ublk device (handed over by a predecessor) instead of
	// adding one. Without ublk it is exported over NBD, on socket ("" for
	// none of its own).
	ublk      *ublk.Options
	recoverID int
	socket    string
	// inherited, if not nil, is socket's listener, handed over by a
	// predecessor (access already set), and from, if not nil, holds the
	// device's contents in package state's format (instead of the state
	// file).
	inherited net.Listener
	from      io.Reader
}

// add creates a device and serves it: exported over NBD and listening on
// its socket, or as a ublk node. The caller has validated the configuration
// for the admin's benefit; blockdev validates it again.
func (d *Daemon) add(sp addSpec) (*entry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.addLocked(sp)
}

func (d *Daemon) addLocked(sp addSpec) (*entry, error) {
	cfg, socket := sp.cfg, sp.socket
	if d.closing {
		return nil, errors.New("daemon: shutting down")
	}
	if _, dup := d.devs[cfg.Name]; dup {
		return nil, control.Errorf(control.ErrExists, "device %s already exists", cfg.Name)
	}
	// Unlocked memory can be swapped out anyway, so holding the whole
	// table faulted in buys nothing then.
	cfg.TableOnDemand = !d.cfg.Swapsafe.Mlock
	dev, err := blockdev.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("daemon: create %s: %w", cfg.Name, err)
	}
	restore := func() error { return d.restore(dev) }
	if sp.from != nil {
		restore = func() error { return d.load(dev, sp.from) }
	}
	if err := restore(); err != nil { // before any client can see it
		dev.Close()
		return nil, err
	}
	e := &entry{dev: dev, cfg: cfg, socket: socket, ublkOpts: sp.ublk}
	if sp.ublk != nil {
		if err := d.startUblkLocked(e, sp.recoverID); err != nil {
			dev.Close()
			return nil, err
		}
	} else if err := d.srv.AddExport(dev); err != nil {
		dev.Close()
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if socket != "" {
		l, err := sp.inherited, error(nil)
		if l == nil {
			if l, err = ListenUnix(socket); err == nil {
				if err = d.socketAccess(socket); err != nil {
					l.Close()
					os.Remove(socket)
				}
			}
		}
		if err != nil {
			d.srv.RemoveExport(cfg.Name)
			dev.Close()
			return nil, err
		}
		e.l = l
		go d.serve(l, e)
	}
	if p := d.cfg.AutoRecompress; p != nil {
		if e.policy, err = recompress.StartPolicy(dev, *p); err != nil {
			d.log.Warn("no background recompression", "device", dev.Name(), "err", err)
		} else {
			d.log.Info("background recompression", "device", dev.Name(), "policy", e.policy.Status().Policy)
		}
	}
	d.devs[cfg.Name] = e
	d.order = append(d.order, cfg.Name)
	if e.ublk != nil {
		d.log.Info("serving", "device", dev.Name(), "size", dev.Size(), "algorithm", dev.Algorithm(), "node", e.ublk.Path())
	} else {
		d.log.Info("serving", "device", dev.Name(), "size", dev.Size(), "algorithm", dev.Algorithm(), "socket", socket)
	}
	return e, nil
}

// List implements control.Manager.
func (d *Daemon) List() []control.Device {
	d.mu.Lock()
	defer d.mu.Unlock()
	sockets := d.socketsLocked()
	out := make([]control.Device, 0, len(d.order))
	for _, name := range d.order {
		out = append(out, d.infoLocked(d.devs[name], sockets))
	}
	return out
}

// Get implements control.Manager.
func (d *Daemon) Get(name string) (control.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.lookupLocked(name)
	if err != nil {
		return control.Device{}, err
	}
	return d.infoLocked(e, d.socketsLocked()), nil
}

func (d *Daemon) lookupLocked(name string) (*entry, error) {
	e, ok := d.devs[name]
	if !ok {
		known := "none"
		if len(d.order) > 0 {
			known = strings.Join(d.order, ", ")
		}
		return nil, control.Errorf(control.ErrNotFound, "no device %q (devices: %s)", name, known)
	}
	return e, nil
}

// socketsLocked lists every unix socket this daemon serves NBD on: an
// nbd-client may reach any export through any of them.
func (d *Daemon) socketsLocked() []string {
	var out []string
	for _, name := range d.order {
		if s := d.devs[name].socket; s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (d *Daemon) infoLocked(e *entry, sockets []string) control.Device {
	s := e.dev.Stats()
	streams := e.dev.Streams()
	if streams == 0 {
		streams = runtime.GOMAXPROCS(0) // what streams.Pool follows when told 0
	}
	info := control.Device{
		Name: e.dev.Name(), DiskSize: int64(e.dev.Size()), Streams: streams, Socket: e.socket,
		Connections: d.srv.Attached(e.dev), Transport: control.TransportNBD,
		MM: control.MMStat{
			OrigDataSize: s.OrigDataSize, ComprDataSize: s.ComprDataSize, MemUsedTotal: s.MemUsedTotal,
			MemLimit: s.MemLimit, MemUsedMax: s.MemUsedMax, SamePages: s.SamePages,
			PagesCompacted: s.PagesCompacted, HugePages: s.HugePages, HugePagesSince: s.HugePagesSince,
		},
		IO:            control.IOStat{FailedReads: s.FailedReads, FailedWrites: s.FailedWrites, InvalidIO: s.InvalidIO, NotifyFree: s.NotifyFree},
		PartialWrites: s.PartialWrites, ReserveWaits: s.StoreReserveWaits, NoMem: s.StoreNoMem, ReserveBytes: s.StoreReserveBytes,
		MMStatText: s.MMStat(), IOStatText: s.IOStat(), DebugStatText: e.dev.DebugStat(), RecompStatText: s.RecompStat(),
	}
	// The compressor table, not Algorithm(), names the primary: it is read
	// under the table's own synchronisation while a knob may be switching it.
	for _, c := range e.dev.Compressors() {
		info.Compressors = append(info.Compressors, control.Compressor{
			Priority: c.Priority, Algorithm: c.Algorithm, Params: c.Params, Current: c.Current,
		})
		if c.Current && c.Priority == 0 {
			info.Algorithm, info.AlgorithmParams = c.Algorithm, c.Params
		}
	}
	switch {
	case e.ublk != nil:
		info.Transport, info.Node = control.TransportUblk, e.ublk.Path()
	case info.Connections > 0:
		// Only a device with a connection can be behind a /dev/nbdN.
		info.NBD = findNBD(e.nbd, e.dev.Name(), sockets)
		info.Node = info.NBD
	}
	if info.Node != "" {
		info.MountPoint = mountPoint(info.Node)
	}
	return info
}

// Create implements control.Manager: it checks the request the way the
// admin wrote it, so every error names the bad value and what would do.
func (d *Daemon) Create(req control.CreateRequest) (control.Device, error) {
	cfg, err := DeviceConfig(req)
	if err != nil {
		return control.Device{}, err
	}
	uo, err := UblkOptions(req)
	if err != nil {
		return control.Device{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if cfg.Name == "" {
		cfg.Name = d.freeNameLocked()
	}
	if cfg.Name == "control" {
		return control.Device{}, control.Errorf(control.ErrInvalid, "the name %q is taken by the control socket; choose another", cfg.Name)
	}
	sp := addSpec{cfg: cfg, ublk: uo, recoverID: -1}
	if uo == nil {
		sp.socket = filepath.Join(d.cfg.SocketDir, cfg.Name+".sock")
	}
	e, err := d.addLocked(sp)
	if err != nil {
		return control.Device{}, err
	}
	return d.infoLocked(e, d.socketsLocked()), nil
}

// freeNameLocked is zramctl --find: the lowest uzramN not in use.
func (d *Daemon) freeNameLocked() string {
	for i := 0; ; i++ {
		n := "uzram" + strconv.Itoa(i)
		if _, used := d.devs[n]; !used {
			return n
		}
	}
}

// DeviceConfig turns a request for a device, from the API or serve's flags,
// into a device configuration, checking it the way the admin wrote it.
func DeviceConfig(req control.CreateRequest) (blockdev.Config, error) {
	var cfg blockdev.Config
	if req.Name != "" && !namePattern.MatchString(req.Name) {
		return cfg, control.Errorf(control.ErrInvalid,
			"bad device name %q: want letters, digits, '.', '_' or '-', at most 64, like uzram1", req.Name)
	}
	if req.Size == "" {
		return cfg, control.Errorf(control.ErrInvalid, "no size given: want one like --size 4G")
	}
	size, err := sizes.Parse(req.Size)
	if err != nil {
		return cfg, control.Errorf(control.ErrInvalid, "bad size: %v", err)
	}
	if size == 0 {
		return cfg, control.Errorf(control.ErrInvalid, "bad size %q: a device needs at least one page (4K)", req.Size)
	}
	algo := req.Algorithm
	if algo == "" {
		algo = zcomp.Default
	}
	if _, err := zcomp.Lookup(algo); err != nil {
		return cfg, control.Errorf(control.ErrInvalid, "unknown algorithm %q: want one of %s", algo, strings.Join(zcomp.Names(), ", "))
	}
	params, err := zcomp.ParseParams(req.AlgorithmParams)
	if err != nil {
		return cfg, control.Errorf(control.ErrInvalid, "bad algorithm params %q: %v", req.AlgorithmParams, err)
	}
	if err := zcomp.ValidateLevel(algo, params.Level); err != nil {
		return cfg, control.Errorf(control.ErrInvalid, "bad algorithm params %q: %v", req.AlgorithmParams, err)
	}
	mode := streams.DefaultMode
	if req.StreamMode != "" {
		if mode, err = streams.ParseMode(req.StreamMode); err != nil {
			return cfg, control.Errorf(control.ErrInvalid, "%v", err)
		}
	}
	if req.Streams < 0 {
		return cfg, control.Errorf(control.ErrInvalid, "bad stream count %d: want 0 (one per CPU) or more", req.Streams)
	}
	var limit int64
	if req.MemLimit != "" {
		if limit, err = sizes.Parse(req.MemLimit); err != nil {
			return cfg, control.Errorf(control.ErrInvalid, "bad mem limit: %v", err)
		}
	}
	return blockdev.Config{
		Name: req.Name, Size: sizes.RoundPage(size), Algorithm: algo, Params: params,
		ParamsText: strings.TrimSpace(req.AlgorithmParams), StreamMode: mode, Streams: req.Streams, MemLimit: limit,
	}, nil
}

// Remove implements control.Manager: zram's reset. It is refused while an
// NBD connection is attached, since the kernel would see its disk vanish.
func (d *Daemon) Remove(name string) error {
	e, err := d.unlink(name)
	if err != nil {
		return err
	}
	e.ops.Lock() // wait for knob calls in flight
	defer e.ops.Unlock()
	d.log.Info("device reset", "device", name)
	if err := e.close(); err != nil {
		return fmt.Errorf("daemon: reset %s: %w", name, err)
	}
	return nil
}

// unlink takes a device off the server, its socket and the daemon's list.
func (d *Daemon) unlink(name string) (*entry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.lookupLocked(name)
	if err != nil {
		return nil, err
	}
	if e.ublk != nil {
		if why := nodeBusy(e.ublk.Path()); why != "" {
			return nil, control.Errorf(control.ErrBusy, "%s is in use: %s is %s: swapoff or umount it first (uzram swapoff %s)", name, e.ublk.Path(), why, name)
		}
	} else if err := d.srv.RemoveExport(name); err != nil {
		n := d.srv.Attached(e.dev)
		where := fmt.Sprintf("%d NBD connection(s)", n)
		if nbd := findNBD(e.nbd, name, d.socketsLocked()); nbd != "" {
			where = nbd
			if mp := mountPoint(nbd); mp != "" {
				where += " (" + mp + ")"
			}
		}
		return nil, control.Errorf(control.ErrBusy, "%s is in use by %s: detach it first (uzram swapoff %s, or uzram detach %s)", name, where, name, name)
	}
	e.removed = true
	if e.l != nil {
		e.l.Close()
		os.Remove(e.socket)
	}
	delete(d.devs, name)
	for i, n := range d.order {
		if n == name {
			d.order = append(d.order[:i], d.order[i+1:]...)
			break
		}
	}
	return e, nil
}

// SetAttachment implements control.Manager.
func (d *Daemon) SetAttachment(name, nbd string) error {
	if nbd != "" && !control.IsNBD(nbd) {
		return control.Errorf(control.ErrInvalid, "bad NBD device %q: want /dev/nbdN", nbd)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e, err := d.lookupLocked(name)
	if err != nil {
		return err
	}
	e.nbd = nbd
	return nil
}

// ListenUnix listens on a unix socket with mode 0600. A stale socket file
// (nobody answering) is replaced; a live one is an error, so a second daemon
// never steals the first one's devices.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("daemon: socket directory: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("daemon: %s is in use by a running server", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("daemon: remove stale socket: %w", err)
		}
	}
	old := syscall.Umask(0o177) // the socket is born 0600: no window where others can connect
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("daemon: listen on %s: %w", path, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false) // the daemon removes it after draining
	return l, nil
}
