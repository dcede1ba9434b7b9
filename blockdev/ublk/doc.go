// Package ublk serves blockdev targets through the Linux kernel's ublk
// driver (drivers/block/ublk_drv.c, Linux 6.0+) as /dev/ublkbN: the fast
// local path, with no socket between the kernel and the device.
//
// The driver hands block requests to userspace through io_uring commands
// (IORING_OP_URING_CMD). Control commands go to /dev/ublk-control
// (ctrl.go): ADD_DEV, SET_PARAMS (basic limits, and discard so that
// `swapon --discard=pages` reaches the store), START_DEV, STOP_DEV,
// DEL_DEV, and START/END_USER_RECOVERY. Each hardware queue (queue.go) is
// one OS thread with a ring of its own: it issues FETCH_REQ for every tag,
// and each completion is a request, described in an array the driver maps
// read-only from /dev/ublkcN. The thread serves it with the same Target
// calls the NBD server makes, then answers with COMMIT_AND_FETCH_REQ,
// which re-arms the tag. With USER_COPY (6.5+) the data moves with
// pread/pwrite on /dev/ublkcN through one buffer per queue; older kernels
// copy into a buffer per tag.
//
// The io_uring code (uring.go) and the ABI (uapi.go) are our own: the Go
// io_uring and ublk modules on GitHub are not served by the module proxy
// this project builds from, and what ublk needs is small: setup, the mapped
// rings, URING_CMD, a poll. Keeping it here also keeps the request path
// allocation-free and under our control (no hidden goroutines, no cgo).
//
// Go specifics:
//   - A queue's commands must come from the thread that fetched (before
//     6.16), so its goroutine locks its OS thread for good; when it returns
//     the thread exits, which is what the driver's recovery waits for.
//   - io_uring_enter is interrupted by signals (Go's preemption among them):
//     Ring.Submit enters again.
//   - Rings are COOP_TASKRUN and SINGLE_ISSUER, not DEFER_TASKRUN: that
//     was five times faster at queue depth 1 in a TCG guest, but 6.12.95
//     crashed in io_uring's exit worker when such a ring closed with ublk
//     commands still fetched, as every handoff and server death does
//     (docs/ublk.md).
//
// Takeover and crashes: devices are added with USER_RECOVERY and
// USER_RECOVERY_REISSUE. When the server goes (Handoff, exit or SIGKILL)
// the kernel keeps /dev/ublkbN, quiesces it and requeues what was in
// flight; a new server calls Recover and gets those requests. A request
// may so run twice, which a block device's reads, writes and discards
// tolerate.
package ublk
