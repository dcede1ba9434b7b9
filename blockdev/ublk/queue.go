package ublk

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/swapsafe"
)

// queue is one hardware queue of a device: a ring of its own, the kernel's
// descriptor array for its tags, and the buffers requests are served from.
// It runs on one OS thread for its whole life (run): before Linux 6.16 the
// driver accepts a queue's commands only from the thread that fetched.
type queue struct {
	dev   *Device
	id    uint16
	depth uint16
	ring  *Ring

	descMem []byte
	descs   []ioDesc

	// With USER_COPY one buffer serves every tag, since the thread serves
	// one request at a time: the data moves with pread/pwrite on
	// /dev/ublkcN. Without it the kernel copies to and from a buffer per
	// tag, so bufs holds depth of them.
	bufs    []byte
	maxIO   int
	scratch []byte // the thread's compression output (Target.WriteAt)

	fetch, commit uint32 // the I/O command encodings in use

	tid  int // the thread's id, once it runs
	live int // tags with a command in the kernel
	// parked are writes that found no store memory while memory was short
	// (blockdev.ErrWouldWait), oldest first: held, uncommitted, and tried
	// again on every wakeup, with a timer armed so there is one. The thread
	// meanwhile serves what needs no memory (reads, discards), and what the
	// kernel completes frees the memory they wait for.
	parked     []parkedWrite
	timerArmed bool
	retryAfter Timespec
	wake       int           // eventfd another goroutine writes to stop the thread
	stopped    chan struct{} // closed when run returns
	handoff    atomic.Bool   // stop serving between requests (handover)
	err        error         // why run returned, if not a normal stop
}

// userData of the completions that are not requests: the wake eventfd was
// written; the retry timer fired.
const (
	wakeTag  = 1 << 32
	timerTag = 2 << 32
)

// parkedWrite is a write waiting for store memory.
type parkedWrite struct {
	tag   uint16
	since time.Time
}

// Parked writes are tried again every parkRetry, and given up on (ENOSPC,
// which the kernel sees as a failed write) after parkMax: memory that
// stays short that long has other problems. The kernel does not time a
// privileged ublk device's requests out (it rearms the timer), so a long
// park costs nothing but the wait. 30 s was too short: at 2x RAM in a TCG
// guest the first swap writes waited 52 s for the store's memory, and two
// 512 KiB writes failed after 30.
const (
	parkRetry = time.Millisecond
	parkMax   = 120 * time.Second
)

func newQueue(d *Device, id uint16) (*queue, error) {
	q := &queue{dev: d, id: id, depth: d.info.QueueDepth, maxIO: d.maxIO, stopped: make(chan struct{}), wake: -1,
		retryAfter: Timespec{Nsec: int64(parkRetry)}}
	q.parked = make([]parkedWrite, 0, q.depth)
	legacy := d.info.Flags&FeatureCmdIoctlEncode == 0
	q.fetch, q.commit = ioOp(ioFetchReq, legacy), ioOp(ioCommitAndFetch, legacy)
	// The kernel maps each queue's array at a fixed stride: the size of the
	// largest possible array.
	stride := roundUp(maxQueueDepth*int(unsafe.Sizeof(ioDesc{})), pageSize)
	size := roundUp(int(q.depth)*int(unsafe.Sizeof(ioDesc{})), pageSize)
	var err error
	if q.descMem, err = unix.Mmap(int(d.ch.Fd()), int64(cmdBufOffset+int(id)*stride), size, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("ublk: queue %d: map request descriptors: %w", id, err)
	}
	q.descs = unsafe.Slice((*ioDesc)(unsafe.Pointer(&q.descMem[0])), q.depth)
	bufs := q.maxIO
	if !d.userCopy() {
		bufs *= int(q.depth)
	}
	// Off the Go heap and touched now: a swap device's request path must
	// not fault on fresh memory (swapsafe.Prefault).
	if q.bufs, err = unix.Mmap(-1, 0, bufs+blockdev.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		q.close()
		return nil, fmt.Errorf("ublk: queue %d: map buffers: %w", id, err)
	}
	swapsafe.Prefault(q.bufs)
	q.scratch = q.bufs[bufs:]
	q.bufs = q.bufs[:bufs]
	if q.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		q.close()
		return nil, fmt.Errorf("ublk: queue %d: eventfd: %w", id, err)
	}
	return q, nil
}

// close releases what the queue holds, once its thread has exited.
func (q *queue) close() {
	if q.ring != nil {
		q.ring.Close()
		q.ring = nil
	}
	if q.descMem != nil {
		unix.Munmap(q.descMem)
		q.descMem, q.descs = nil, nil
	}
	if q.bufs != nil {
		unix.Munmap(q.bufs[:cap(q.bufs)])
		q.bufs = nil
	}
	if q.wake >= 0 {
		unix.Close(q.wake)
		q.wake = -1
	}
}

// buf is the buffer tag's request of n bytes is served from.
func (q *queue) buf(tag uint16, n int) []byte {
	if q.dev.userCopy() {
		return q.bufs[:n]
	}
	off := int(tag) * q.maxIO
	return q.bufs[off : off+n]
}

// bufAddr is what FETCH and COMMIT tell the kernel of tag's buffer: nothing
// with USER_COPY.
func (q *queue) bufAddr(tag uint16) uint64 {
	if q.dev.userCopy() {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&q.bufs[int(tag)*q.maxIO])))
}

// run is the queue's thread: it fetches every tag, reports on ready, then
// serves requests until the kernel aborts every tag (STOP_DEV) or the queue
// is told to hand off. It never unlocks its OS thread, so the thread exits
// with it: the driver sees its server thread gone, which is what lets a
// successor recover the device (USER_RECOVERY).
func (q *queue) run(ready chan<- error) {
	runtime.LockOSThread()
	q.tid = unix.Gettid()
	defer close(q.stopped)
	var err error
	// The ring is created by the thread that uses it (SINGLE_ISSUER), one
	// entry per tag plus the wake-up poll and the retry timer. It is not
	// DEFER_TASKRUN although that ran QD1 reads in a 6.12 TCG guest at
	// 1,650 IOPS against 350: with it, 6.12.95 crashed in io_uring's exit
	// worker when a ring closed with ublk commands still fetched (handoff,
	// a server's death) within six handoff runs, whether the ring closed
	// before or after its thread exited (a request freed twice, the
	// /dev/ublkcN file's count below zero). See docs/ublk.md.
	if q.ring, err = NewRing(uint32(q.depth)+2, setupCoopTaskrun|setupSingleIssuer); err != nil {
		ready <- fmt.Errorf("ublk: queue %d: %w", q.id, err)
		return
	}
	// The ring stays open when the thread exits: the kernel cancels the
	// thread's commands in its own exit, and close (after the thread is
	// gone) closes the ring.
	for tag := uint16(0); tag < q.depth; tag++ {
		if err = q.prepare(q.fetch, tag, 0); err != nil {
			break
		}
	}
	if err == nil {
		err = q.ring.PreparePoll(q.wake, wakeTag)
	}
	if err == nil {
		err = q.ring.Submit(0)
	}
	if err != nil {
		ready <- fmt.Errorf("ublk: queue %d: fetch: %w", q.id, err)
		return
	}
	q.live = int(q.depth)
	ready <- nil
	q.err = q.serve()
}

// prepare queues a FETCH or COMMIT_AND_FETCH for tag with result res.
func (q *queue) prepare(op uint32, tag uint16, res int32) error {
	c := ioCmd{qid: q.id, tag: tag, result: res, addr: q.bufAddr(tag)}
	return q.ring.PrepareCmd(int(q.dev.ch.Fd()), op, bytesOf(&c), uint64(tag))
}

// serve is the loop: submit the commits, wait for requests, serve each.
func (q *queue) serve() error {
	for q.live > 0 {
		if len(q.parked) > 0 && !q.timerArmed {
			if err := q.ring.PrepareTimeout(&q.retryAfter, timerTag); err != nil {
				return err
			}
			q.timerArmed = true
		}
		if err := q.ring.Submit(1); err != nil {
			return err
		}
		for {
			ud, res, ok := q.ring.Next()
			if !ok {
				break
			}
			switch ud {
			case wakeTag:
				if q.handoff.Load() {
					// Commits already prepared go in; every other tag
					// (parked writes too) stays with the kernel for a
					// successor.
					return q.ring.Submit(0)
				}
				var b [8]byte
				unix.Read(q.wake, b[:])
				if err := q.ring.PreparePoll(q.wake, wakeTag); err != nil {
					return err
				}
				continue
			case timerTag:
				q.timerArmed = false
				continue
			}
			tag := uint16(ud)
			switch res {
			case ioResOK:
				if q.handoff.Load() {
					// Left unanswered: the kernel requeues it for the
					// successor (USER_RECOVERY_REISSUE).
					q.live--
					continue
				}
				if res, park := q.handle(tag, true); park {
					q.parked = append(q.parked, parkedWrite{tag: tag, since: time.Now()})
				} else if err := q.prepare(q.commit, tag, res); err != nil {
					return err
				}
			case ioResAbort:
				q.live-- // STOP_DEV, or the device is going away
			default:
				return fmt.Errorf("ublk: queue %d tag %d: command refused: %v", q.id, tag, unix.Errno(-res))
			}
		}
		if err := q.retryParked(); err != nil {
			return err
		}
	}
	return nil
}

// retryParked tries the parked writes again, oldest first, and stops at
// the first that still finds no memory: the others would not either.
func (q *queue) retryParked() error {
	done := 0
	// What is left moves to the front, so the slice keeps its backing
	// array (depth entries, made once) and parking never allocates.
	defer func() { q.parked = q.parked[:copy(q.parked, q.parked[done:])] }()
	for _, pw := range q.parked {
		// Parked too long: one last try that waits for the refiller, and
		// fails as WriteAt does (ENOSPC) if it stays stuck.
		res, park := q.handle(pw.tag, time.Since(pw.since) < parkMax)
		if park {
			return nil
		}
		done++
		if err := q.prepare(q.commit, pw.tag, res); err != nil {
			return err
		}
	}
	return nil
}

// handle serves tag's request and returns its result: bytes for a read or
// write, 0 for the others, or a negative errno; or, if mayPark, park: a
// write that found no store memory and changed nothing.
func (q *queue) handle(tag uint16, mayPark bool) (res int32, park bool) {
	d := &q.descs[tag]
	t := q.dev.target
	off := d.startSector << 9
	n := int(d.nrSectors) << 9
	var err error
	op := d.op()
	switch op {
	case opRead:
		buf := q.buf(tag, n)
		if err = t.ReadAt(buf, off); err == nil && q.dev.userCopy() {
			err = q.copy(unix.Pwrite, tag, buf)
		}
	case opWrite:
		buf := q.buf(tag, n)
		if q.dev.userCopy() {
			err = q.copy(unix.Pread, tag, buf)
		}
		switch {
		case err != nil:
		case mayPark:
			// Short of store memory, the pages stored so far complete and
			// the kernel sends the rest again: their completion frees the
			// memory the store's refiller waits for in reclaim.
			n, err = t.WritePartial(buf, off, q.scratch)
			if errors.Is(err, blockdev.ErrWouldWait) {
				return 0, true
			}
		default:
			err = t.WriteAt(buf, off, q.scratch)
		}
	case opFlush:
		err = t.Flush()
		n = 0
	case opDiscard:
		err = t.Discard(off, uint64(n))
		n = 0
	case opWriteZeroes:
		err = t.WriteZeroes(off, uint64(n), d.opFlags&ioFlagNoUnmap != 0)
		n = 0
	default:
		t.CountInvalid()
		q.dev.count(op, false)
		return -int32(unix.EOPNOTSUPP), false
	}
	q.dev.count(op, err == nil)
	if err != nil {
		return -int32(errno(err)), false
	}
	return int32(n), false
}

// copy moves a request's data between buf and the kernel's request pages
// (USER_COPY): rw is unix.Pread (a write's payload in) or unix.Pwrite (a
// read's data out).
func (q *queue) copy(rw func(int, []byte, int64) (int, error), tag uint16, buf []byte) error {
	pos := int64(ioBufOffset) + int64(q.id)<<qidOff + int64(tag)<<ioBufBits
	for len(buf) > 0 {
		n, err := rw(int(q.dev.ch.Fd()), buf, pos)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("ublk: copy tag %d data: %w", tag, err)
		}
		if n == 0 {
			return fmt.Errorf("ublk: copy tag %d data: request ended %d bytes early", tag, len(buf))
		}
		buf, pos = buf[n:], pos+int64(n)
	}
	return nil
}

// errno maps a device error to the result the kernel turns into a block
// status: ENOSPC (mem_limit) and EINVAL (out of range) keep their meaning.
func errno(err error) unix.Errno {
	switch {
	case errors.Is(err, blockdev.ErrNoSpace):
		return unix.ENOSPC
	case errors.Is(err, blockdev.ErrRange):
		return unix.EINVAL
	}
	return unix.EIO
}

const pageSize = 4096

func roundUp(n, to int) int { return (n + to - 1) / to * to }

func sleepBriefly() { time.Sleep(10 * time.Millisecond) }
