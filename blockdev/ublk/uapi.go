package ublk

import (
	"fmt"
	"unsafe"
)

// The ublk ABI (include/uapi/linux/ublk_cmd.h, Linux 6.12).

// Control command numbers. The kernel takes them either bare (the legacy
// encoding, CONFIG_BLKDEV_UBLK_LEGACY_OPCODES) or ioctl-encoded (6.4+, and
// the only form GET_FEATURES and later commands exist in).
const (
	cmdGetDevInfo    = 0x02
	cmdAddDev        = 0x04
	cmdDelDev        = 0x05
	cmdStartDev      = 0x06
	cmdStopDev       = 0x07
	cmdSetParams     = 0x08
	cmdGetParams     = 0x09
	cmdStartRecovery = 0x10
	cmdEndRecovery   = 0x11
	cmdGetFeatures   = 0x13
	cmdDelDevAsync   = 0x14 // 6.9+, ioctl encoding only
)

// I/O command numbers, issued on /dev/ublkcN by each queue's thread.
const (
	ioFetchReq       = 0x20
	ioCommitAndFetch = 0x21
)

// ioctl encoding: direction in bits 30-31, size in 16-29, type in 8-15.
const (
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | uint32('u')<<8 | nr }

// ctrlOp is the ioctl-encoded form of a control command; legacy the bare one.
func ctrlOp(nr uint32, legacy bool) uint32 {
	if legacy {
		return nr
	}
	dir := uint32(iocRead | iocWrite)
	switch nr {
	case cmdGetDevInfo, cmdGetParams, cmdGetFeatures, cmdDelDevAsync:
		dir = iocRead
	}
	return ioc(dir, nr, uint32(unsafe.Sizeof(ctrlCmd{})))
}

// ioOp is the ioctl-encoded form of an I/O command, or the bare one.
func ioOp(nr uint32, legacy bool) uint32 {
	if legacy {
		return nr
	}
	return ioc(iocRead|iocWrite, nr, uint32(unsafe.Sizeof(ioCmd{})))
}

// Feature flags (ublksrv_ctrl_dev_info.flags).
const (
	FeatureURingCmdCompInTask  = 1 << 1
	FeatureNeedGetData         = 1 << 2
	FeatureUserRecovery        = 1 << 3
	FeatureUserRecoveryReissue = 1 << 4
	FeatureUnprivileged        = 1 << 5
	FeatureCmdIoctlEncode      = 1 << 6
	FeatureUserCopy            = 1 << 7
)

// Device states (ublksrv_ctrl_dev_info.state).
const (
	StateDead     = 0
	StateLive     = 1
	StateQuiesced = 2
)

// Request ops and flags in ublksrv_io_desc.op_flags.
const (
	opRead        = 0
	opWrite       = 1
	opFlush       = 2
	opDiscard     = 3
	opWriteSame   = 4
	opWriteZeroes = 5

	ioFlagFUA     = 1 << 13
	ioFlagNoUnmap = 1 << 15
	ioFlagSwap    = 1 << 16
)

// Completion results of a FETCH or COMMIT_AND_FETCH.
const (
	ioResOK    = 0
	ioResAbort = -19 // -ENODEV: the device is going away; the tag is done
)

// Layout of /dev/ublkcN: each queue's descriptor array is mapped at
// cmdBufOffset + qid * the largest array's size; with USER_COPY a request's
// data is read and written at ioBufOffset + (qid, tag, offset) bits.
const (
	cmdBufOffset  = 0
	ioBufOffset   = 0x80000000
	maxQueueDepth = 4096
	ioBufBits     = 25
	tagBits       = 16
	qidOff        = ioBufBits + tagBits
)

// ctrlCmd is struct ublksrv_ctrl_cmd: the 32-byte payload of a control
// command.
type ctrlCmd struct {
	devID      uint32
	queueID    uint16
	len        uint16
	addr       uint64
	data       uint64
	devPathLen uint16
	pad        uint16
	reserved   uint32
}

// DevInfo is struct ublksrv_ctrl_dev_info.
type DevInfo struct {
	NrHWQueues    uint16
	QueueDepth    uint16
	State         uint16
	pad0          uint16
	MaxIOBufBytes uint32
	DevID         uint32
	ServerPID     int32
	pad1          uint32
	Flags         uint64
	ServerFlags   uint64 // the server's own, the kernel keeps it
	OwnerUID      uint32
	OwnerGID      uint32
	reserved1     uint64
	reserved2     uint64
}

// ioCmd is struct ublksrv_io_cmd: the 16-byte payload of an I/O command.
type ioCmd struct {
	qid    uint16
	tag    uint16
	result int32
	addr   uint64
}

// ioDesc is struct ublksrv_io_desc: one request, as the kernel describes it
// in the queue's mapped array.
type ioDesc struct {
	opFlags     uint32
	nrSectors   uint32
	startSector uint64
	addr        uint64
}

func (d *ioDesc) op() uint8 { return uint8(d.opFlags) }

// Parameter types (ublk_params.types).
const (
	paramBasic   = 1 << 0
	paramDiscard = 1 << 1
	paramDevt    = 1 << 2
)

// Attributes in paramsBasic.attrs.
const (
	attrReadOnly      = 1 << 0
	attrVolatileCache = 1 << 2
)

type paramsBasic struct {
	attrs                                                   uint32
	logicalBSShift, physicalBSShift, ioOptShift, ioMinShift uint8
	maxSectors, chunkSectors                                uint32
	devSectors, virtBoundaryMask                            uint64
}

type paramsDiscard struct {
	discardAlignment, discardGranularity, maxDiscardSectors, maxWriteZeroesSectors uint32
	maxDiscardSegments, reserved0                                                  uint16
}

type paramsDevt struct {
	charMajor, charMinor, diskMajor, diskMinor uint32
}

type paramsZoned struct {
	maxOpenZones, maxActiveZones, maxZoneAppendSectors uint32
	reserved                                           [20]byte
}

// params is struct ublk_params as of 6.12; older kernels read the prefix
// they know (len says how much we pass).
type params struct {
	len     uint32
	types   uint32
	basic   paramsBasic
	discard paramsDiscard
	devt    paramsDevt
	zoned   paramsZoned
}

func init() {
	// The kernel reads these by layout: a Go struct that drifted would
	// corrupt every command.
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"ublksrv_ctrl_cmd", unsafe.Sizeof(ctrlCmd{}), 32},
		{"ublksrv_ctrl_dev_info", unsafe.Sizeof(DevInfo{}), 64},
		{"ublksrv_io_cmd", unsafe.Sizeof(ioCmd{}), 16},
		{"ublksrv_io_desc", unsafe.Sizeof(ioDesc{}), 24},
		{"ublk_param_basic", unsafe.Sizeof(paramsBasic{}), 32},
		{"ublk_param_discard", unsafe.Sizeof(paramsDiscard{}), 20},
		{"ublk_params", unsafe.Sizeof(params{}), 112},
		{"io_uring_sqe", unsafe.Sizeof(sqe{}), 64},
		{"io_uring_params", unsafe.Sizeof(uringParams{}), 120},
	} {
		if c.got != c.want {
			panic(fmt.Sprintf("ublk: %s is %d bytes, want %d", c.name, c.got, c.want))
		}
	}
}

// bytesOf views a fixed-size ABI struct as the bytes the kernel reads.
func bytesOf[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}
