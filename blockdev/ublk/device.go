package ublk

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev"
)

// Options shape a ublk device.
type Options struct {
	// ID asks for /dev/ublkbID; negative takes the first free one.
	ID int
	// Queues is the number of hardware queues, each served by one thread;
	// 0 means one per CPU.
	Queues int
	// Depth is each queue's number of tags (requests in flight). 0: 128.
	Depth int
	// ReadOnly makes the block device refuse writes.
	ReadOnly bool
	// NoRecovery turns off USER_RECOVERY: without it the kernel removes the
	// device when its server dies, failing every request in flight.
	NoRecovery bool
}

// Defaults.
const (
	DefaultDepth = 128
	// maxIOUserCopy is the largest request with USER_COPY: one buffer of it
	// per queue. Without USER_COPY every tag needs its own buffer, so
	// requests are kept smaller.
	maxIOUserCopy = 512 << 10
	maxIOPerTag   = 64 << 10
)

// Device is a blockdev target served as /dev/ublkbN.
type Device struct {
	ctrl   *Control
	target blockdev.Target
	info   DevInfo
	ch     *os.File // /dev/ublkcN
	maxIO  int      // the largest request, bytes (max_sectors)
	queues []*queue

	counts [opWriteZeroes + 1][2]atomic.Int64 // per op: ok, failed

	stopOnce sync.Once
	stopErr  error
}

// Start creates a ublk device for t and serves it until Stop: ADD_DEV,
// SET_PARAMS, one thread per queue fetching every tag, then START_DEV,
// which returns once the kernel has added /dev/ublkbN.
func Start(ctrl *Control, t blockdev.Target, opts Options) (*Device, error) {
	d, err := add(ctrl, t, opts)
	if err != nil {
		return nil, err
	}
	if err := d.startQueues(); err != nil {
		d.remove()
		return nil, err
	}
	// START_DEV returns only after add_disk, which reads the partition
	// table through the queues, so they serve meanwhile.
	if err := ctrl.StartDev(d.info.DevID, os.Getpid()); err != nil {
		d.remove()
		return nil, err
	}
	return d, nil
}

// add runs ADD_DEV and SET_PARAMS and opens /dev/ublkcN.
func add(ctrl *Control, t blockdev.Target, opts Options) (*Device, error) {
	if t.Size()%blockdev.PageSize != 0 || t.Size() == 0 {
		return nil, fmt.Errorf("ublk: device size %d is not a positive number of pages", t.Size())
	}
	queues, depth := opts.Queues, opts.Depth
	if queues <= 0 {
		queues = runtime.NumCPU()
	}
	if depth <= 0 {
		depth = DefaultDepth
	}
	if depth > maxQueueDepth {
		return nil, fmt.Errorf("ublk: queue depth %d over the driver's %d", depth, maxQueueDepth)
	}
	id := uint32(0xffffffff)
	if opts.ID >= 0 {
		id = uint32(opts.ID)
	}
	flags := uint64(FeatureUserCopy | FeatureCmdIoctlEncode)
	if !opts.NoRecovery {
		flags |= FeatureUserRecovery | FeatureUserRecoveryReissue
	}
	info, err := ctrl.AddDev(DevInfo{NrHWQueues: uint16(queues), QueueDepth: uint16(depth),
		MaxIOBufBytes: maxIOUserCopy, DevID: id, Flags: flags})
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("ublk: /dev/ublkb%d is taken: %w", opts.ID, err)
		}
		return nil, err
	}
	d := &Device{ctrl: ctrl, target: t, info: info, maxIO: maxIOUserCopy}
	if !d.userCopy() {
		// A kernel before 6.5: per-tag buffers, smaller requests.
		d.maxIO = maxIOPerTag
	}
	p := params{types: paramBasic | paramDiscard}
	p.basic = paramsBasic{
		// 512-byte sectors as zram's callers expect from any disk, 4 KiB
		// pages as the device stores them (I/O below that is
		// read-modify-write).
		logicalBSShift: 9, physicalBSShift: 12, ioMinShift: 12, ioOptShift: 12,
		maxSectors: uint32(d.maxIO >> 9), devSectors: t.Size() >> 9,
	}
	if opts.ReadOnly {
		p.basic.attrs |= attrReadOnly
	}
	// Discard is how swap (swapon --discard=pages) and fstrim give pages
	// back; one range per request, as the driver supports.
	p.discard = paramsDiscard{discardGranularity: blockdev.PageSize, maxDiscardSectors: 1 << 22,
		maxWriteZeroesSectors: 1 << 22, maxDiscardSegments: 1}
	if err := ctrl.setParams(info.DevID, p); err != nil {
		d.remove()
		return nil, err
	}
	if d.ch, err = openCharDev(info.DevID); err != nil {
		d.remove()
		return nil, err
	}
	return d, nil
}

// startQueues starts every queue's thread and waits until each has fetched
// all its tags.
func (d *Device) startQueues() error {
	ready := make(chan error, d.info.NrHWQueues)
	for i := uint16(0); i < d.info.NrHWQueues; i++ {
		q, err := newQueue(d, i)
		if err != nil {
			return err
		}
		d.queues = append(d.queues, q)
		go q.run(ready)
	}
	var first error
	for range d.queues {
		if err := <-ready; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// remove undoes add: the kernel cancels every queue's commands (so their
// threads end), then the device is deleted.
func (d *Device) remove() {
	d.ctrl.StopDev(d.info.DevID)
	d.waitQueues()
	if d.ch != nil {
		d.ch.Close()
	}
	d.ctrl.DelDev(d.info.DevID)
}

// waitQueues waits until every queue's thread has exited (the driver's
// recovery expects the old server threads gone, not merely done: it checks
// they are exiting), then releases the queues.
func (d *Device) waitQueues() {
	for _, q := range d.queues {
		<-q.stopped
		for i := 0; i < 500 && q.tid != 0 && threadAlive(q.tid); i++ {
			sleepBriefly()
		}
		q.close()
	}
}

// ID is N in /dev/ublkbN.
func (d *Device) ID() int { return int(d.info.DevID) }

// Path is the block device node.
func (d *Device) Path() string { return BlockPath(d.ID()) }

// BlockPath is the node of ublk device id.
func BlockPath(id int) string { return fmt.Sprintf("/dev/ublkb%d", id) }

// Info is what the kernel agreed to when the device was added.
func (d *Device) Info() DevInfo { return d.info }

func (d *Device) userCopy() bool { return d.info.Flags&FeatureUserCopy != 0 }

// Stop removes /dev/ublkbN and /dev/ublkcN and waits for the queue threads.
// Requests in flight at that moment fail; the caller makes sure nothing
// (swap, a mount) still uses the device.
func (d *Device) Stop() error {
	d.stopOnce.Do(func() {
		err := d.ctrl.StopDev(d.info.DevID)
		d.waitQueues()
		d.ch.Close()
		if derr := d.ctrl.DelDev(d.info.DevID); err == nil {
			err = derr
		}
		d.stopErr = err
		for _, q := range d.queues {
			if q.err != nil && d.stopErr == nil {
				d.stopErr = q.err
			}
		}
	})
	return d.stopErr
}

// count records one request of op with its outcome.
func (d *Device) count(op uint8, ok bool) {
	if int(op) >= len(d.counts) {
		return
	}
	i := 0
	if !ok {
		i = 1
	}
	d.counts[op][i].Add(1)
}

var opNames = [...]string{opRead: "read", opWrite: "write", opFlush: "flush", opDiscard: "discard", opWriteSame: "write_same", opWriteZeroes: "write_zeroes"}

// CommandCounts reports requests served per operation, split by outcome,
// as nbd.Server.CommandCounts does.
func (d *Device) CommandCounts() map[string][2]int64 {
	out := map[string][2]int64{}
	for op := range d.counts {
		ok, failed := d.counts[op][0].Load(), d.counts[op][1].Load()
		if ok+failed > 0 {
			out[opNames[op]] = [2]int64{ok, failed}
		}
	}
	return out
}

// Handoff stops serving for a successor that will Recover the device: each
// queue stops between two requests (what it has not answered stays with the
// kernel, which gives it to the successor: USER_RECOVERY_REISSUE) and its
// thread exits, and /dev/ublkcN is closed. The kernel then holds the device
// quiesced, every request waiting, until the successor takes it. A device
// without recovery is stopped instead, as the kernel would.
func (d *Device) Handoff() error {
	if d.info.Flags&FeatureUserRecovery == 0 {
		return d.Stop()
	}
	for _, q := range d.queues {
		q.handoff.Store(true)
		unix.Write(q.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
	d.waitQueues()
	return d.ch.Close()
}

// threadAlive reports whether this process still has thread tid.
func threadAlive(tid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}

// recoveryWait bounds how long Recover waits for the old server to be gone
// (its threads exited, /dev/ublkcN released, the device quiesced).
const recoveryWait = 30 * time.Second

// Recover serves device id, whose previous server is gone (handed off,
// exited or killed), for t: START_USER_RECOVERY, one thread per queue
// fetching every tag, END_USER_RECOVERY. The requests the kernel held then
// reach t. The device must have been added with recovery and be t's size.
func Recover(ctrl *Control, t blockdev.Target, id int) (*Device, error) {
	info, err := ctrl.DevInfo(uint32(id))
	if err != nil {
		return nil, err
	}
	if info.Flags&FeatureUserRecovery == 0 {
		return nil, fmt.Errorf("ublk: /dev/ublkb%d was added without USER_RECOVERY: it cannot be taken over", id)
	}
	p, err := ctrl.params(uint32(id))
	if err != nil {
		return nil, err
	}
	if p.basic.devSectors<<9 != t.Size() {
		return nil, fmt.Errorf("ublk: /dev/ublkb%d has %d bytes, the device to serve it has %d", id, p.basic.devSectors<<9, t.Size())
	}
	deadline := time.Now().Add(recoveryWait)
	for {
		err = ctrl.StartRecovery(uint32(id))
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		sleepBriefly() // the old server's files are still being released
	}
	if err != nil {
		return nil, fmt.Errorf("ublk: recover /dev/ublkb%d: %w", id, err)
	}
	d := &Device{ctrl: ctrl, target: t, info: info, maxIO: int(p.basic.maxSectors) << 9}
	if d.ch, err = openCharDev(info.DevID); err != nil {
		return nil, err
	}
	if err := d.startQueues(); err != nil {
		d.Stop()
		return nil, err
	}
	if err := ctrl.EndRecovery(info.DevID, os.Getpid()); err != nil {
		d.Stop()
		return nil, err
	}
	d.info.State = StateLive
	return d, nil
}
