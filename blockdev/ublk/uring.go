package ublk

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The io_uring ABI (include/uapi/linux/io_uring.h), as much as ublk needs:
// setup, the mmap'ed rings, and IORING_OP_URING_CMD submissions.
const (
	sysIOUringSetup = 425
	sysIOUringEnter = 426

	opNop      = 0
	opPollAdd  = 6
	opTimeout  = 11
	opURingCmd = 46

	setupCQSize       = 1 << 3
	setupCoopTaskrun  = 1 << 8
	setupSQE128       = 1 << 10
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13

	enterGetEvents = 1 << 0

	featSingleMmap = 1 << 0

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	sqeSize = 64
	cqeSize = 16
)

// uringParams is struct io_uring_params.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// sqe is struct io_uring_sqe, first 64 bytes; a ring set up with SQE128 has
// 64 more bytes of command after each.
type sqe struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	off      uint64 // for URING_CMD: cmd_op in the low 32 bits
	addr     uint64
	len      uint32
	opFlags  uint32
	userData uint64
	bufIndex uint16
	persona  uint16
	fileIdx  uint32
	cmd      [16]byte // addr3 and pad2: where a URING_CMD's payload starts
}

// cqe is struct io_uring_cqe (without CQE32's extra 16 bytes).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// Ring is one io_uring instance: a submission queue of entries and a
// completion queue twice as deep. It is not safe for concurrent use; ublk
// wants each queue's commands issued by one thread anyway.
type Ring struct {
	fd      int
	sqe128  bool
	entries uint32

	sqMem, cqMem, sqeMem []byte

	sqHead, sqTail *uint32
	sqMask         uint32
	sqArray        []uint32
	sqes           []byte

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []cqe

	pending uint32 // SQEs filled but not yet handed to the kernel
}

// errRingFull: every submission entry is in use; submit first.
var errRingFull = errors.New("ublk: io_uring submission queue full")

// NewRing sets up a ring of entries submissions with setup flags (setupSQE128
// for ublk's control commands). A kernel that refuses a flag other than
// SQE128 (an old one) is asked again without it.
func NewRing(entries uint32, flags uint32) (*Ring, error) {
	var p uringParams
	var fd uintptr
	var errno syscall.Errno
	// Each newer than the next: DEFER_TASKRUN 6.1, SINGLE_ISSUER 6.0,
	// COOP_TASKRUN 5.19; DEFER_TASKRUN needs SINGLE_ISSUER.
	optional := []uint32{setupDeferTaskrun, setupSingleIssuer, setupCoopTaskrun}
	for {
		p = uringParams{flags: flags | setupCQSize, cqEntries: 2 * entries}
		fd, _, errno = syscall.RawSyscall(sysIOUringSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
		if errno != syscall.EINVAL || len(optional) == 0 {
			break
		}
		for len(optional) > 0 && flags&optional[0] == 0 {
			optional = optional[1:]
		}
		if len(optional) == 0 {
			break
		}
		flags &^= optional[0]
	}
	if errno != 0 {
		if errno == syscall.ENOSYS || errno == syscall.EPERM {
			return nil, fmt.Errorf("ublk: io_uring_setup: %w (io_uring disabled or missing: see /proc/sys/kernel/io_uring_disabled)", errno)
		}
		return nil, fmt.Errorf("ublk: io_uring_setup: %w", errno)
	}
	r := &Ring{fd: int(fd), sqe128: flags&setupSQE128 != 0, entries: p.sqEntries}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *Ring) mapRings(p *uringParams) error {
	sqLen := int(p.sqOff.array + p.sqEntries*4)
	cqLen := int(p.cqOff.cqes + p.cqEntries*cqeSize)
	if p.features&featSingleMmap != 0 {
		sqLen = max(sqLen, cqLen)
		cqLen = sqLen
	}
	var err error
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	if r.sqMem, err = unix.Mmap(r.fd, offSQRing, sqLen, prot, flags); err != nil {
		return fmt.Errorf("ublk: map io_uring submission ring: %w", err)
	}
	if p.features&featSingleMmap != 0 {
		r.cqMem = r.sqMem
	} else if r.cqMem, err = unix.Mmap(r.fd, offCQRing, cqLen, prot, flags); err != nil {
		return fmt.Errorf("ublk: map io_uring completion ring: %w", err)
	}
	size := sqeSize
	if r.sqe128 {
		size *= 2
	}
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*size, prot, flags); err != nil {
		return fmt.Errorf("ublk: map io_uring submission entries: %w", err)
	}
	r.sqes = r.sqeMem
	r.sqHead = (*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.head]))
	r.sqTail = (*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.tail]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.ringMask]))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.array])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.ringMask]))
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.cqMem[p.cqOff.cqes])), p.cqEntries)
	return nil
}

// Close unmaps the rings and closes the ring's descriptor; the kernel then
// cancels whatever it still holds.
func (r *Ring) Close() error {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.cqMem != nil && (r.sqMem == nil || &r.cqMem[0] != &r.sqMem[0]) {
		unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
	}
	r.sqeMem, r.cqMem, r.sqMem = nil, nil, nil
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	if err != nil {
		return fmt.Errorf("ublk: close io_uring: %w", err)
	}
	return nil
}

// next returns the next free submission entry, zeroed, with its command
// area (16 bytes, or 80 with SQE128), or errRingFull.
func (r *Ring) next() (*sqe, []byte, error) {
	head := atomic.LoadUint32(r.sqHead)
	tail := *r.sqTail + r.pending
	if tail-head >= r.entries {
		return nil, nil, errRingFull
	}
	idx := tail & r.sqMask
	size := sqeSize
	if r.sqe128 {
		size *= 2
	}
	b := r.sqes[int(idx)*size : int(idx+1)*size]
	clear(b)
	r.sqArray[idx] = idx
	r.pending++
	e := (*sqe)(unsafe.Pointer(&b[0]))
	return e, b[48:], nil
}

// PrepareCmd queues an IORING_OP_URING_CMD on fd with cmd_op op, copying
// payload into the entry's command area; the completion carries userData.
func (r *Ring) PrepareCmd(fd int, op uint32, payload []byte, userData uint64) error {
	e, area, err := r.next()
	if err != nil {
		return err
	}
	if len(payload) > len(area) {
		r.pending--
		return fmt.Errorf("ublk: %d byte command does not fit a %d byte entry area", len(payload), len(area))
	}
	e.opcode = opURingCmd
	e.fd = int32(fd)
	e.off = uint64(op)
	e.userData = userData
	copy(area, payload)
	return nil
}

// PrepareNop queues a no-op whose completion carries userData.
func (r *Ring) PrepareNop(userData uint64) error {
	e, _, err := r.next()
	if err != nil {
		return err
	}
	e.opcode = opNop
	e.userData = userData
	return nil
}

// PreparePoll queues a one-shot poll for fd to become readable.
func (r *Ring) PreparePoll(fd int, userData uint64) error {
	e, _, err := r.next()
	if err != nil {
		return err
	}
	e.opcode = opPollAdd
	e.fd = int32(fd)
	e.opFlags = unix.POLLIN // poll32_events
	e.userData = userData
	return nil
}

// Timespec is struct __kernel_timespec.
type Timespec struct{ Sec, Nsec int64 }

// PrepareTimeout queues a timeout that completes (with -ETIME) after ts.
// The kernel reads ts when the entry is submitted.
func (r *Ring) PrepareTimeout(ts *Timespec, userData uint64) error {
	e, _, err := r.next()
	if err != nil {
		return err
	}
	e.opcode = opTimeout
	e.addr = uint64(uintptr(unsafe.Pointer(ts)))
	e.len = 1
	e.userData = userData
	return nil
}

// Submit hands the queued entries to the kernel and, with wait > 0, waits
// until at least wait completions are ready. It may return with fewer: a
// signal (Go's preemption among them) that lands after the entries went in
// ends the wait early, so callers reap what is there and come back. A
// signal that lands before they went in is retried.
func (r *Ring) Submit(wait uint32) error {
	tail := *r.sqTail + r.pending
	atomic.StoreUint32(r.sqTail, tail)
	r.pending = 0
	flags := uintptr(0)
	if wait > 0 {
		flags = enterGetEvents
	}
	for {
		toSubmit := tail - atomic.LoadUint32(r.sqHead)
		_, _, errno := syscall.Syscall6(sysIOUringEnter, uintptr(r.fd), uintptr(toSubmit), uintptr(wait), flags, 0, 0)
		switch errno {
		case 0:
			if tail == atomic.LoadUint32(r.sqHead) {
				return nil
			}
			// The kernel took fewer than given (short of memory for a
			// request): go again for the rest.
		case syscall.EINTR:
		case syscall.EAGAIN, syscall.EBUSY:
			// Completions backed up: the caller must reap first.
			if r.Ready() > 0 {
				return nil
			}
		default:
			return fmt.Errorf("ublk: io_uring_enter: %w", errno)
		}
	}
}

// Ready counts completions waiting to be reaped.
func (r *Ring) Ready() uint32 {
	return atomic.LoadUint32(r.cqTail) - *r.cqHead
}

// Next consumes the oldest completion ready, if any.
func (r *Ring) Next() (userData uint64, res int32, ok bool) {
	head := *r.cqHead
	if head == atomic.LoadUint32(r.cqTail) {
		return 0, 0, false
	}
	c := &r.cqes[head&r.cqMask]
	userData, res = c.userData, c.res
	atomic.StoreUint32(r.cqHead, head+1)
	return userData, res, true
}
