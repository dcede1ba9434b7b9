// Package proto is the NBD wire format as uzram's server and client speak
// it: the protocol's constants (go-nbd's protocol package where it has the
// value, the NBD protocol document, doc/proto.md, for the rest) and the
// transmission request header. One place for both sides, so they cannot
// drift apart.
package proto

import (
	"encoding/binary"
	"fmt"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// NBD wire constants. go-nbd's protocol package has the magics and a few ids;
// the rest (FLUSH, TRIM, WRITE_ZEROES, the error replies and flags it lacks)
// come from the NBD protocol document (doc/proto.md).
const (
	NBDMagic      = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	OptMagic      = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	OptReplyMagic = protocol.NEGOTIATION_MAGIC_REPLY
	RequestMagic  = protocol.TRANSMISSION_MAGIC_REQUEST
	ReplyMagic    = protocol.TRANSMISSION_MAGIC_REPLY

	FlagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	FlagNoZeroes      = uint16(1 << 1)

	ClientFixedNewstyle = uint32(1 << 0)
	ClientNoZeroes      = uint32(1 << 1)

	OptExportName      = uint32(1)
	OptAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	OptList            = protocol.NEGOTIATION_ID_OPTION_LIST
	OptStartTLS        = uint32(5)
	OptInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	OptGo              = protocol.NEGOTIATION_ID_OPTION_GO
	OptStructuredReply = uint32(8)

	RepAck        = protocol.NEGOTIATION_TYPE_REPLY_ACK
	RepServer     = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	RepInfo       = protocol.NEGOTIATION_TYPE_REPLY_INFO
	RepErrUnsup   = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	RepErrInvalid = uint32(3 | 1<<31)
	RepErrUnknown = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	// RepErrTLSReqd answers options sent before STARTTLS on a TLS-only server.
	RepErrTLSReqd = uint32(5 | 1<<31)

	InfoExport    = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	InfoName      = protocol.NEGOTIATION_TYPE_INFO_NAME
	InfoBlockSize = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	TFlagHasFlags     = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	TFlagReadOnly     = uint16(1 << 1)
	TFlagSendFlush    = uint16(1 << 2)
	TFlagSendFUA      = uint16(1 << 3)
	TFlagSendTrim     = uint16(1 << 5)
	TFlagWriteZeroes  = uint16(1 << 6)
	TFlagCanMultiConn = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN

	CmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	CmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	CmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	CmdFlush       = uint16(3)
	CmdTrim        = uint16(4)
	CmdWriteZeroes = uint16(6)

	CmdFlagFUA    = uint16(1 << 0)
	CmdFlagNoHole = uint16(1 << 1)

	ErrPerm     = protocol.TRANSMISSION_ERROR_EPERM
	ErrIO       = uint32(5)
	ErrInval    = protocol.TRANSMISSION_ERROR_EINVAL
	ErrNoSpc    = uint32(28)
	ErrNoMem    = uint32(12)
	ErrShutdown = uint32(108)
)

// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
const (
	MinBlockSize       = 512
	PreferredBlockSize = 4096
	MaxRequestSize     = 32 << 20
)

// DefaultTransmissionFlags are what every writable export advertises: the
// Linux nbd driver sends FLUSH, FUA, TRIM and WRITE_ZEROES, and opens
// several connections, only when the matching flag is set.
const DefaultTransmissionFlags = TFlagHasFlags | TFlagSendFlush | TFlagSendFUA |
	TFlagSendTrim | TFlagWriteZeroes | TFlagCanMultiConn

const (
	RequestHeaderSize = 28
	ReplyHeaderSize   = 16
)

// Request is one parsed NBD transmission request header.
type Request struct {
	Flags  uint16
	Type   uint16
	Handle uint64
	Offset uint64
	Length uint32
}

// protocolError means the stream is out of sync (a bad magic, an oversized
// WRITE payload): the only request errors that close a connection.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "nbd: " + e.msg }

// ParseRequest decodes a request header. It fails only when the stream can no
// longer be trusted (bad magic, or a WRITE payload too large to read past);
// every other problem is left to Validate, which turns it into an error reply.
func ParseRequest(hdr []byte) (Request, error) {
	if len(hdr) < RequestHeaderSize {
		return Request{}, &protocolError{fmt.Sprintf("short request header: %d bytes", len(hdr))}
	}
	if m := binary.BigEndian.Uint32(hdr[0:4]); m != RequestMagic {
		return Request{}, &protocolError{fmt.Sprintf("bad request magic %#x", m)}
	}
	r := Request{
		Flags:  binary.BigEndian.Uint16(hdr[4:6]),
		Type:   binary.BigEndian.Uint16(hdr[6:8]),
		Handle: binary.BigEndian.Uint64(hdr[8:16]),
		Offset: binary.BigEndian.Uint64(hdr[16:24]),
		Length: binary.BigEndian.Uint32(hdr[24:28]),
	}
	if r.Type == CmdWrite && r.Length > MaxRequestSize {
		return r, &protocolError{fmt.Sprintf("write payload of %d bytes exceeds the %d byte maximum", r.Length, MaxRequestSize)}
	}
	return r, nil
}

// PayloadLen is how many bytes follow the header on the wire: only a WRITE
// carries data, whatever its other fields say.
func (r Request) PayloadLen() int {
	if r.Type == CmdWrite {
		return int(r.Length)
	}
	return 0
}

// Validate checks a request against an export of the given size and flags and
// returns the NBD error to reply with, or 0 when the request may run.
func (r Request) Validate(size uint64, tflags uint16) uint32 {
	switch r.Type {
	case CmdRead, CmdWrite, CmdTrim, CmdWriteZeroes:
	case CmdFlush:
		if r.Offset != 0 || r.Length != 0 {
			return ErrInval
		}
		return r.checkFlags(0)
	case CmdDisc:
		return 0
	default:
		return ErrInval
	}
	if r.Length > MaxRequestSize && (r.Type == CmdRead || r.Type == CmdWrite) {
		return ErrInval
	}
	if r.Offset > size || uint64(r.Length) > size-r.Offset {
		return ErrInval
	}
	if r.Type != CmdRead && tflags&TFlagReadOnly != 0 {
		return ErrPerm
	}
	switch r.Type {
	case CmdRead:
		return r.checkFlags(CmdFlagFUA)
	case CmdWriteZeroes:
		return r.checkFlags(CmdFlagFUA | CmdFlagNoHole)
	default:
		return r.checkFlags(CmdFlagFUA)
	}
}

func (r Request) checkFlags(allowed uint16) uint32 {
	if r.Flags&^allowed != 0 {
		return ErrInval
	}
	return 0
}

// CommandName names a command type for logs and metrics.
func CommandName(t uint16) string {
	switch t {
	case CmdRead:
		return "read"
	case CmdWrite:
		return "write"
	case CmdDisc:
		return "disc"
	case CmdFlush:
		return "flush"
	case CmdTrim:
		return "trim"
	case CmdWriteZeroes:
		return "write_zeroes"
	}
	return fmt.Sprintf("cmd%d", t)
}

// ErrName names an NBD error code (the protocol's are errno values).
func ErrName(c uint32) string {
	switch c {
	case ErrPerm:
		return "EPERM"
	case ErrIO:
		return "EIO"
	case ErrNoMem:
		return "ENOMEM"
	case ErrInval:
		return "EINVAL"
	case ErrNoSpc:
		return "ENOSPC"
	case ErrShutdown:
		return "ESHUTDOWN"
	}
	return "unknown"
}
