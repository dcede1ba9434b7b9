// Package daemon runs uzram's server process: it creates the devices, serves
// them over NBD on unix sockets (and TCP when asked), makes the process safe
// to be swap (swapsafe), prints stats on SIGUSR1 and at exit, and shuts down
// cleanly on SIGINT/SIGTERM: stop accepting, finish in-flight requests,
// remove the sockets.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/swapsafe"
)

// Config is everything `uzram serve` was asked for.
type Config struct {
	Device   blockdev.Config
	Socket   string // unix socket path; "" for none
	Listen   string // TCP host:port; "" for none
	Swapsafe swapsafe.Options
	Server   blockdev.ServerOptions
	Stdout   io.Writer // stats go here
	Logger   *slog.Logger
	// Ready, if set, is called once the sockets accept connections.
	Ready func()
}

// DefaultSocketDir holds the default sockets, one per device.
const DefaultSocketDir = "/run/uzram"

// SocketPath is the default socket of a device.
func SocketPath(name string) string { return filepath.Join(DefaultSocketDir, name+".sock") }

// Run serves until ctx is done or SIGINT/SIGTERM arrives.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	for _, err := range swapsafe.Apply(cfg.Swapsafe) {
		log.Warn("running without a swap-safety measure", "err", err)
	}
	dev, err := blockdev.New(cfg.Device)
	if err != nil {
		return err
	}
	defer dev.Close()
	cfg.Server.Logger = log
	srv := blockdev.NewServer(cfg.Server)
	if err := srv.AddExport(dev); err != nil {
		return err
	}

	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	if cfg.Socket != "" {
		l, err := ListenUnix(cfg.Socket)
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
		defer os.Remove(cfg.Socket)
	}
	if cfg.Listen != "" {
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			closeAll()
			return fmt.Errorf("daemon: listen on %s: %w", cfg.Listen, err)
		}
		listeners = append(listeners, l)
	}
	if len(listeners) == 0 {
		return errors.New("daemon: nothing to listen on: give --socket or --listen")
	}
	serveErr := make(chan error, len(listeners))
	for _, l := range listeners {
		log.Info("serving", "device", dev.Name(), "size", dev.Size(), "algorithm", dev.Algorithm(), "addr", l.Addr().String())
		go func() { serveErr <- srv.Serve(l) }()
	}
	if cfg.Ready != nil {
		cfg.Ready()
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	var runErr error
loop:
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGUSR1 {
				printStats(cfg.Stdout, dev)
				continue
			}
			log.Info("shutting down", "signal", s.String())
			break loop
		case <-ctx.Done():
			break loop
		case err := <-serveErr:
			if err != nil {
				runErr = err
				break loop
			}
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && runErr == nil {
		runErr = err
	}
	printStats(cfg.Stdout, dev)
	return runErr
}

func printStats(w io.Writer, d *blockdev.Device) {
	s := d.Stats()
	fmt.Fprintf(w, "device %s\nmm_stat %sio_stat %s", d.Name(), s.MMStat(), s.IOStat())
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
	l.(*net.UnixListener).SetUnlinkOnClose(false) // Run removes it after draining
	return l, nil
}
