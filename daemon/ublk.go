package daemon

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev/ublk"
	"github.com/uzram/uzram/control"
)

// Devices served through the kernel's ublk driver (/dev/ublkbN) rather than
// an NBD socket: the daemon opens /dev/ublk-control when the first one is
// made, and each such device runs its queue threads (blockdev/ublk).

// maxUblkID bounds a requested /dev/ublkbN number (the driver's minors).
const maxUblkID = 1 << 20

// UblkOptions reads the transport of a request: nil for NBD, the ublk
// options otherwise, checked the way the admin wrote them.
func UblkOptions(req control.CreateRequest) (*ublk.Options, error) {
	switch req.Transport {
	case "", control.TransportNBD:
		if req.UblkID != nil || req.UblkQueues != 0 {
			return nil, control.Errorf(control.ErrInvalid, "a ublk id or queue count was given for an NBD device: add --ublk")
		}
		return nil, nil
	case control.TransportUblk:
	default:
		return nil, control.Errorf(control.ErrInvalid, "unknown transport %q: want nbd or ublk", req.Transport)
	}
	o := &ublk.Options{ID: -1, Queues: req.UblkQueues}
	if req.UblkID != nil {
		if *req.UblkID < 0 || *req.UblkID >= maxUblkID {
			return nil, control.Errorf(control.ErrInvalid, "bad ublk id %d: want 0 or more, below %d", *req.UblkID, maxUblkID)
		}
		o.ID = *req.UblkID
	}
	if req.UblkQueues < 0 || req.UblkQueues > 64 {
		return nil, control.Errorf(control.ErrInvalid, "bad ublk queue count %d: want 0 (one per CPU) to 64", req.UblkQueues)
	}
	return o, nil
}

// ublkControlLocked opens /dev/ublk-control on first use; d.mu is held.
func (d *Daemon) ublkControlLocked() (*ublk.Control, error) {
	if d.ublkCtl != nil {
		return d.ublkCtl, nil
	}
	c, err := ublk.OpenControl()
	if err != nil {
		if errors.Is(err, ublk.ErrNoUblk) {
			return nil, control.Errorf(control.ErrInvalid, "%v", err)
		}
		return nil, err
	}
	d.ublkCtl = c
	return c, nil
}

// nodeBusy says why a block device node cannot go away: it is active swap,
// mounted, or otherwise held exclusively (what an O_EXCL open finds). An
// ordinary opener (a shell's dd) is not seen; its I/O fails when the device
// goes, as it would on a zram reset.
func nodeBusy(node string) string {
	if mp := mountPoint(node); mp == "[SWAP]" {
		return "active swap"
	} else if mp != "" {
		return "mounted on " + mp
	}
	fd, err := unix.Open(node, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return "held by another user (a filesystem, swap or device mapper)"
	}
	if err == nil {
		unix.Close(fd)
	}
	return ""
}

// busyUblkLocked names a ublk device in use, if any, and why: what keeps
// the daemon from stopping (the kernel would fail swap I/O, or hold it for
// a server that never comes). d.mu is held.
func (d *Daemon) busyUblkLocked() string {
	for _, name := range d.order {
		if e := d.devs[name]; e.ublk != nil {
			if why := nodeBusy(e.ublk.Path()); why != "" {
				return fmt.Sprintf("%s (%s) is %s", e.ublk.Path(), name, why)
			}
		}
	}
	return ""
}

// startUblk serves dev as /dev/ublkbN: a new device, or with recoverID >= 0
// the existing one a predecessor handed over. d.mu is held.
func (d *Daemon) startUblkLocked(e *entry, recoverID int) error {
	ctl, err := d.ublkControlLocked()
	if err != nil {
		return err
	}
	if recoverID >= 0 {
		e.ublk, err = ublk.Recover(ctl, e.dev, recoverID)
	} else {
		e.ublk, err = ublk.Start(ctl, e.dev, *e.ublkOpts)
	}
	if err != nil {
		return fmt.Errorf("daemon: %s: %w", e.dev.Name(), err)
	}
	return nil
}

// closeUblk releases /dev/ublk-control once the devices are gone.
func (d *Daemon) closeUblkLocked() {
	if d.ublkCtl != nil {
		d.ublkCtl.Close()
		d.ublkCtl = nil
	}
}
