package ublk

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the ublk driver's control device.
const ControlPath = "/dev/ublk-control"

// ErrNoUblk means the kernel has no ublk driver loaded.
var ErrNoUblk = errors.New("no " + ControlPath + ": this kernel has no ublk (modprobe ublk_drv; Linux 6.0+)")

// Control issues control commands on /dev/ublk-control: one at a time,
// each waiting for its completion (START_DEV, say, returns only once the
// kernel has added the disk, which reads from it).
type Control struct {
	mu   sync.Mutex
	fd   int
	ring *Ring
	// buf is where commands point the kernel (device info, parameters):
	// mapped outside the Go heap, since the kernel reads and writes it
	// after the submitting call has returned, from a worker thread.
	buf    []byte
	legacy bool // the kernel refused ioctl-encoded commands (before 6.4)
}

// OpenControl opens /dev/ublk-control.
func OpenControl() (*Control, error) {
	fd, err := unix.Open(ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
			return nil, ErrNoUblk
		}
		return nil, fmt.Errorf("ublk: open %s: %w", ControlPath, err)
	}
	c := &Control{fd: fd}
	if c.ring, err = NewRing(4, setupSQE128); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if c.buf, err = unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE); err != nil {
		c.ring.Close()
		unix.Close(fd)
		return nil, fmt.Errorf("ublk: map control buffer: %w", err)
	}
	return c, nil
}

// Close releases the control device.
func (c *Control) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ring.Close()
	unix.Munmap(c.buf)
	return unix.Close(c.fd)
}

// cmdError is a control command the kernel refused.
type cmdError struct {
	cmd   string
	devID uint32
	errno syscall.Errno
}

func (e *cmdError) Error() string {
	return fmt.Sprintf("ublk: %s on device %d: %v", e.cmd, e.devID, e.errno)
}

func (e *cmdError) Unwrap() error { return e.errno }

var cmdNames = map[uint32]string{
	cmdGetDevInfo: "GET_DEV_INFO", cmdAddDev: "ADD_DEV", cmdDelDev: "DEL_DEV",
	cmdStartDev: "START_DEV", cmdStopDev: "STOP_DEV", cmdSetParams: "SET_PARAMS",
	cmdGetParams: "GET_PARAMS", cmdStartRecovery: "START_USER_RECOVERY",
	cmdEndRecovery: "END_USER_RECOVERY", cmdGetFeatures: "GET_FEATURES", cmdDelDevAsync: "DEL_DEV_ASYNC",
}

// issue runs one control command with c.mu held: hdr's addr is filled in
// with c.buf when n > 0 (the bytes of c.buf the command uses).
func (c *Control) issue(nr uint32, hdr ctrlCmd, n int) error {
	if n > 0 {
		hdr.addr = uint64(uintptr(unsafe.Pointer(&c.buf[0])))
		hdr.len = uint16(n)
	}
	for {
		if err := c.ring.PrepareCmd(c.fd, ctrlOp(nr, c.legacy), bytesOf(&hdr), uint64(nr)); err != nil {
			return err
		}
		if err := c.ring.Submit(1); err != nil {
			return err
		}
		_, res, ok := c.ring.Next()
		for !ok {
			// The wait ended on a signal: wait again.
			if err := c.ring.Submit(1); err != nil {
				return err
			}
			_, res, ok = c.ring.Next()
		}
		switch {
		case res == 0:
			return nil
		case res == -int32(unix.EOPNOTSUPP) && !c.legacy && nr != cmdGetFeatures && nr != cmdDelDevAsync:
			// A kernel before 6.4 knows only the bare command numbers.
			c.legacy = true
			continue
		case res == -int32(unix.EINTR):
			continue // START_DEV and END_USER_RECOVERY wait interruptibly
		}
		return &cmdError{cmd: cmdNames[nr], devID: hdr.devID, errno: syscall.Errno(-res)}
	}
}

// AddDev creates a device (/dev/ublkcN) from info and returns what the
// kernel made of it: its id, and the feature flags it kept of those asked.
func (c *Control) AddDev(info DevInfo) (DevInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := copy(c.buf, bytesOf(&info))
	hdr := ctrlCmd{devID: info.DevID, queueID: 0xffff}
	if err := c.issue(cmdAddDev, hdr, n); err != nil {
		return DevInfo{}, err
	}
	var out DevInfo
	copy(bytesOf(&out), c.buf)
	return out, nil
}

// DevInfo reads a device's information, its state among it.
func (c *Control) DevInfo(id uint32) (DevInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out DevInfo
	if err := c.issue(cmdGetDevInfo, ctrlCmd{devID: id, queueID: 0xffff}, int(unsafe.Sizeof(out))); err != nil {
		return DevInfo{}, err
	}
	copy(bytesOf(&out), c.buf)
	return out, nil
}

// setParams sets a device's parameters (before START_DEV only).
func (c *Control) setParams(id uint32, p params) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p.len = uint32(unsafe.Sizeof(p))
	n := copy(c.buf, bytesOf(&p))
	return c.issue(cmdSetParams, ctrlCmd{devID: id, queueID: 0xffff}, n)
}

// params reads a device's parameters.
func (c *Control) params(id uint32) (params, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var p params
	p.len = uint32(unsafe.Sizeof(p))
	n := copy(c.buf, bytesOf(&p))
	if err := c.issue(cmdGetParams, ctrlCmd{devID: id, queueID: 0xffff}, n); err != nil {
		return params{}, err
	}
	copy(bytesOf(&p), c.buf)
	return p, nil
}

// simple runs a command that carries only the device id and one datum.
func (c *Control) simple(nr, id uint32, data uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.issue(nr, ctrlCmd{devID: id, queueID: 0xffff, data: data}, 0)
}

// StartDev exposes /dev/ublkbN once every queue has fetched; pid is the
// serving process.
func (c *Control) StartDev(id uint32, pid int) error { return c.simple(cmdStartDev, id, uint64(pid)) }

// StopDev removes /dev/ublkbN: requests in flight fail, and every queue's
// fetch commands complete with the abort result.
func (c *Control) StopDev(id uint32) error { return c.simple(cmdStopDev, id, 0) }

// DelDev removes /dev/ublkcN. The id is freed once nobody holds the
// device open any more: DEL_DEV waits for that, so where the kernel has the
// asynchronous form (6.9+) it is used, and a stray opener (a shell with
// /dev/ublkbN open) cannot hang the daemon.
func (c *Control) DelDev(id uint32) error {
	err := c.simple(cmdDelDevAsync, id, 0)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		err = c.simple(cmdDelDev, id, 0)
	}
	return err
}

// StartRecovery readies a device whose server died (state QUIESCED, its
// /dev/ublkcN closed) for a new one (USER_RECOVERY).
func (c *Control) StartRecovery(id uint32) error { return c.simple(cmdStartRecovery, id, 0) }

// EndRecovery resumes a recovered device once the new server's queues have
// fetched: the requests the kernel held go to it.
func (c *Control) EndRecovery(id uint32, pid int) error {
	return c.simple(cmdEndRecovery, id, uint64(pid))
}

// Features asks which feature flags the driver supports (6.5+; older
// kernels answer EOPNOTSUPP or EINVAL).
func (c *Control) Features() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.issue(cmdGetFeatures, ctrlCmd{queueID: 0xffff}, 8); err != nil {
		return 0, err
	}
	return *(*uint64)(unsafe.Pointer(&c.buf[0])), nil
}

// openCharDev opens /dev/ublkcN, which devtmpfs creates as ADD_DEV returns
// (udev may take a moment to settle its mode).
func openCharDev(id uint32) (*os.File, error) {
	path := fmt.Sprintf("/dev/ublkc%d", id)
	var err error
	for try := 0; try < 100; try++ {
		var f *os.File
		if f, err = os.OpenFile(path, os.O_RDWR, 0); err == nil {
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			break
		}
		sleepBriefly()
	}
	return nil, fmt.Errorf("ublk: open %s: %w", path, err)
}
