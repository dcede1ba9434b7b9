package ublk

import (
	"errors"
	"testing"
	"unsafe"
)

// TestOpcodes holds the encodings against the values the 6.12 uapi header's
// macros produce (UBLK_U_CMD_*, UBLK_U_IO_*), and the legacy numbers.
func TestOpcodes(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uint32
		want uint32
	}{
		{"UBLK_U_CMD_ADD_DEV", ctrlOp(cmdAddDev, false), 0xc0207504},
		{"UBLK_U_CMD_GET_DEV_INFO", ctrlOp(cmdGetDevInfo, false), 0x80207502},
		{"UBLK_U_CMD_GET_FEATURES", ctrlOp(cmdGetFeatures, false), 0x80207513},
		{"UBLK_U_CMD_START_DEV", ctrlOp(cmdStartDev, false), 0xc0207506},
		{"UBLK_U_CMD_STOP_DEV", ctrlOp(cmdStopDev, false), 0xc0207507},
		{"UBLK_U_CMD_DEL_DEV", ctrlOp(cmdDelDev, false), 0xc0207505},
		{"UBLK_U_CMD_SET_PARAMS", ctrlOp(cmdSetParams, false), 0xc0207508},
		{"UBLK_U_CMD_START_USER_RECOVERY", ctrlOp(cmdStartRecovery, false), 0xc0207510},
		{"UBLK_U_CMD_END_USER_RECOVERY", ctrlOp(cmdEndRecovery, false), 0xc0207511},
		{"UBLK_U_IO_FETCH_REQ", ioOp(ioFetchReq, false), 0xc0107520},
		{"UBLK_U_IO_COMMIT_AND_FETCH_REQ", ioOp(ioCommitAndFetch, false), 0xc0107521},
		{"UBLK_CMD_ADD_DEV", ctrlOp(cmdAddDev, true), 0x04},
		{"UBLK_IO_COMMIT_AND_FETCH_REQ", ioOp(ioCommitAndFetch, true), 0x21},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// TestLayouts: field offsets the kernel reads (offsetof in the 6.12 header).
func TestLayouts(t *testing.T) {
	var p params
	var info DevInfo
	var e sqe
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"ublk_params.basic", unsafe.Offsetof(p.basic), 8},
		{"ublk_params.discard", unsafe.Offsetof(p.discard), 40},
		{"ublk_params.devt", unsafe.Offsetof(p.devt), 60},
		{"ublk_params.zoned", unsafe.Offsetof(p.zoned), 76},
		{"ublk_param_basic.max_sectors", unsafe.Offsetof(p.basic.maxSectors), 8},
		{"ublk_param_basic.dev_sectors", unsafe.Offsetof(p.basic.devSectors), 16},
		{"ublksrv_ctrl_dev_info.max_io_buf_bytes", unsafe.Offsetof(info.MaxIOBufBytes), 8},
		{"ublksrv_ctrl_dev_info.dev_id", unsafe.Offsetof(info.DevID), 12},
		{"ublksrv_ctrl_dev_info.ublksrv_pid", unsafe.Offsetof(info.ServerPID), 16},
		{"ublksrv_ctrl_dev_info.flags", unsafe.Offsetof(info.Flags), 24},
		{"ublksrv_ctrl_dev_info.owner_uid", unsafe.Offsetof(info.OwnerUID), 40},
		{"io_uring_sqe.off", unsafe.Offsetof(e.off), 8},
		{"io_uring_sqe.addr", unsafe.Offsetof(e.addr), 16},
		{"io_uring_sqe.len", unsafe.Offsetof(e.len), 24},
		{"io_uring_sqe.user_data", unsafe.Offsetof(e.userData), 32},
		{"io_uring_sqe.cmd", unsafe.Offsetof(e.cmd), 48},
		{"io_uring_params.sq_off", unsafe.Offsetof(uringParams{}.sqOff), 40},
		{"io_uring_params.cq_off", unsafe.Offsetof(uringParams{}.cqOff), 80},
	} {
		if c.got != c.want {
			t.Errorf("%s at %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestDescriptorDecoding: a descriptor as the kernel fills it for a swap
// write of 8 pages at sector 2048 with FUA, and a WRITE_ZEROES that must
// keep its pages (NOUNMAP).
func TestDescriptorDecoding(t *testing.T) {
	d := ioDesc{opFlags: opWrite | ioFlagSwap | ioFlagFUA, nrSectors: 64, startSector: 2048}
	if d.op() != opWrite || d.opFlags&ioFlagSwap == 0 || d.startSector<<9 != 1<<20 || int(d.nrSectors)<<9 != 32768 {
		t.Fatalf("decoded op %d flags %#x", d.op(), d.opFlags)
	}
	z := ioDesc{opFlags: opWriteZeroes | ioFlagNoUnmap}
	if z.op() != opWriteZeroes || z.opFlags&ioFlagNoUnmap == 0 {
		t.Fatalf("write-zeroes decoded as op %d flags %#x", z.op(), z.opFlags)
	}
}

// TestUserCopyOffset: USER_COPY addresses a request's data by queue, tag and
// byte offset (ublk_pos_to_hwq, ublk_pos_to_tag, ublk_pos_to_buf_off).
func TestUserCopyOffset(t *testing.T) {
	q := &queue{id: 3}
	pos := int64(ioBufOffset) + int64(q.id)<<qidOff + int64(77)<<ioBufBits + 4096
	rel := pos - ioBufOffset
	if hwq, tag, off := (rel>>qidOff)&(1<<12-1), (rel>>ioBufBits)&(1<<tagBits-1), rel&(1<<ioBufBits-1); hwq != 3 || tag != 77 || off != 4096 {
		t.Fatalf("position %#x decodes to queue %d tag %d offset %d", pos, hwq, tag, off)
	}
}

// TestNoUblk: where the kernel has no ublk, opening the control device says
// so in one line.
func TestNoUblk(t *testing.T) {
	c, err := OpenControl()
	if err == nil {
		c.Close()
		t.Skip("this kernel has ublk")
	}
	if !errors.Is(err, ErrNoUblk) {
		t.Fatalf("OpenControl: %v, want ErrNoUblk", err)
	}
	if want := "no /dev/ublk-control: this kernel has no ublk (modprobe ublk_drv; Linux 6.0+)"; err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
}
