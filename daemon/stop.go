package daemon

import (
	"errors"
	"time"

	"github.com/uzram/uzram/control"
)

// stopRequest is `uzram stop`, on its way to Run's loop.
type stopRequest struct{ force bool }

// Stop implements control.Manager. A ublk node in use holds the daemon as
// it holds swapoff: its server going would fail the node's I/O (swap pages
// lost to the processes that own them), so without force the daemon refuses
// and keeps serving.
func (d *Daemon) Stop(force bool) error {
	if !force {
		d.mu.Lock()
		why := d.busyUblkLocked()
		d.mu.Unlock()
		if why != "" {
			return control.Errorf(control.ErrBusy, "not stopping: %s: swapoff or umount it first, or stop with --force", why)
		}
	}
	select {
	case d.stopReq <- stopRequest{force: force}:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("daemon: not stopping: it is busy handing over or shutting down already")
	}
}

// refuseSignalStop says why a SIGTERM or SIGINT is refused: a ublk node in
// use ("" when nothing holds the daemon).
func (d *Daemon) refuseSignalStop() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.busyUblkLocked()
}
