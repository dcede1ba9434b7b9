package blockdev

import (
	"encoding/binary"
	"fmt"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// NBD wire constants. go-nbd's protocol package has the magics and a few ids;
// the rest (FLUSH, TRIM, WRITE_ZEROES, the error replies and flags it lacks)
// come from the NBD protocol document (doc/proto.md).
const (
	nbdMagic      = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	optMagic      = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	optReplyMagic = protocol.NEGOTIATION_MAGIC_REPLY
	requestMagic  = protocol.TRANSMISSION_MAGIC_REQUEST
	replyMagic    = protocol.TRANSMISSION_MAGIC_REPLY

	flagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = uint16(1 << 1)

	clientFixedNewstyle = uint32(1 << 0)
	clientNoZeroes      = uint32(1 << 1)

	optExportName      = uint32(1)
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        = uint32(5)
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)

	repAck        = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer     = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo       = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repErrUnsup   = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrInvalid = uint32(3 | 1<<31)
	repErrUnknown = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN

	infoExport    = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName      = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoBlockSize = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	tflagHasFlags     = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	tflagReadOnly     = uint16(1 << 1)
	tflagSendFlush    = uint16(1 << 2)
	tflagSendFUA      = uint16(1 << 3)
	tflagSendTrim     = uint16(1 << 5)
	tflagWriteZeroes  = uint16(1 << 6)
	tflagCanMultiConn = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN

	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdWriteZeroes = uint16(6)

	cmdFlagFUA    = uint16(1 << 0)
	cmdFlagNoHole = uint16(1 << 1)

	errPerm  = protocol.TRANSMISSION_ERROR_EPERM
	errIO    = uint32(5)
	errInval = protocol.TRANSMISSION_ERROR_EINVAL
	errNoSpc = uint32(28)
)

// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
const (
	MinBlockSize       = 512
	PreferredBlockSize = 4096
	MaxRequestSize     = 32 << 20
)

// DefaultTransmissionFlags are what every writable export advertises: the
// kernel sends FLUSH, FUA, TRIM, WRITE_ZEROES and opens several connections
// only when these are set (DESIGN.md section 5).
const DefaultTransmissionFlags = tflagHasFlags | tflagSendFlush | tflagSendFUA |
	tflagSendTrim | tflagWriteZeroes | tflagCanMultiConn

const (
	requestHeaderSize = 28
	replyHeaderSize   = 16
)

// Request is one parsed NBD transmission request header.
type Request struct {
	Flags  uint16
	Type   uint16
	Handle uint64
	Offset uint64
	Length uint32
}

// errBadMagic means the stream is out of sync: the only request error that
// closes a connection (besides an oversized WRITE payload).
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "blockdev: nbd: " + e.msg }

// ParseRequest decodes a request header. It fails only when the stream can no
// longer be trusted (bad magic, or a WRITE payload too large to read past);
// every other problem is left to Validate, which turns it into an error reply.
func ParseRequest(hdr []byte) (Request, error) {
	if len(hdr) < requestHeaderSize {
		return Request{}, &protocolError{fmt.Sprintf("short request header: %d bytes", len(hdr))}
	}
	if m := binary.BigEndian.Uint32(hdr[0:4]); m != requestMagic {
		return Request{}, &protocolError{fmt.Sprintf("bad request magic %#x", m)}
	}
	r := Request{
		Flags:  binary.BigEndian.Uint16(hdr[4:6]),
		Type:   binary.BigEndian.Uint16(hdr[6:8]),
		Handle: binary.BigEndian.Uint64(hdr[8:16]),
		Offset: binary.BigEndian.Uint64(hdr[16:24]),
		Length: binary.BigEndian.Uint32(hdr[24:28]),
	}
	if r.Type == cmdWrite && r.Length > MaxRequestSize {
		return r, &protocolError{fmt.Sprintf("write payload of %d bytes exceeds the %d byte maximum", r.Length, MaxRequestSize)}
	}
	return r, nil
}

// PayloadLen is how many bytes follow the header on the wire: only a WRITE
// carries data, whatever its other fields say.
func (r Request) PayloadLen() int {
	if r.Type == cmdWrite {
		return int(r.Length)
	}
	return 0
}

// Validate checks a request against an export of the given size and flags and
// returns the NBD error to reply with, or 0 when the request may run.
func (r Request) Validate(size uint64, tflags uint16) uint32 {
	switch r.Type {
	case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes:
	case cmdFlush:
		if r.Offset != 0 || r.Length != 0 {
			return errInval
		}
		return r.checkFlags(0)
	case cmdDisc:
		return 0
	default:
		return errInval
	}
	if r.Length > MaxRequestSize && (r.Type == cmdRead || r.Type == cmdWrite) {
		return errInval
	}
	if r.Offset > size || uint64(r.Length) > size-r.Offset {
		return errInval
	}
	if r.Type != cmdRead && tflags&tflagReadOnly != 0 {
		return errPerm
	}
	switch r.Type {
	case cmdRead:
		return r.checkFlags(cmdFlagFUA)
	case cmdWriteZeroes:
		return r.checkFlags(cmdFlagFUA | cmdFlagNoHole)
	default:
		return r.checkFlags(cmdFlagFUA)
	}
}

func (r Request) checkFlags(allowed uint16) uint32 {
	if r.Flags&^allowed != 0 {
		return errInval
	}
	return 0
}

// CommandName names a command type for logs and metrics.
func CommandName(t uint16) string {
	switch t {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disc"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "write_zeroes"
	}
	return fmt.Sprintf("cmd%d", t)
}
