package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
)

// maxOptionLen bounds an option's data. Real options are tiny (an export
// name is at most 4 KiB); anything larger is read past up to this bound and
// refused, and beyond it the client is not speaking NBD.
const maxOptionLen = 1 << 20

// errAbort ends a handshake the client asked to end.
var errAbort = errors.New("nbd: client aborted the handshake")

// handshake runs the fixed-newstyle negotiation and returns the export the
// client chose, with the flags to serve it with. Every option error that the
// protocol lets us answer is answered, and the negotiation goes on.
func (c *conn) handshake() (blockdev.Target, uint16, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], proto.NBDMagic)
	binary.BigEndian.PutUint64(hello[8:], proto.OptMagic)
	binary.BigEndian.PutUint16(hello[16:], proto.FlagFixedNewstyle|proto.FlagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return nil, 0, fmt.Errorf("nbd: send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, 0, fmt.Errorf("nbd: read client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(cf[:])
	if cflags&^(proto.ClientFixedNewstyle|proto.ClientNoZeroes) != 0 {
		return nil, 0, fmt.Errorf("nbd: unknown client flags %#x", cflags)
	}
	noZeroes := cflags&proto.ClientNoZeroes != 0

	for {
		var oh [16]byte
		if _, err := io.ReadFull(c.br, oh[:]); err != nil {
			return nil, 0, fmt.Errorf("nbd: read option: %w", err)
		}
		if m := binary.BigEndian.Uint64(oh[0:]); m != proto.OptMagic {
			return nil, 0, fmt.Errorf("nbd: bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(oh[8:])
		n := binary.BigEndian.Uint32(oh[12:])
		if n > maxOptionLen {
			return nil, 0, fmt.Errorf("nbd: option %d carries %d bytes, more than %d", opt, n, maxOptionLen)
		}
		data := make([]byte, n) // handshake only: allocation is fine here
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, 0, fmt.Errorf("nbd: read option %d data: %w", opt, err)
		}
		if c.tlsRequired() && opt != proto.OptStartTLS && opt != proto.OptAbort {
			if opt == proto.OptExportName {
				// No error reply exists for EXPORT_NAME: the protocol says close.
				return nil, 0, errors.New("nbd: EXPORT_NAME before STARTTLS on a TLS-only server")
			}
			if err := c.optReply(opt, proto.RepErrTLSReqd, []byte("TLS required: send NBD_OPT_STARTTLS first")); err != nil {
				return nil, 0, err
			}
			continue
		}
		switch opt {
		case proto.OptStartTLS:
			if err := c.startTLS(opt, n); err != nil {
				return nil, 0, err
			}
		case proto.OptExportName:
			d := c.srv.lookup(string(data))
			if d == nil {
				// EXPORT_NAME has no error reply: the protocol says close.
				return nil, 0, fmt.Errorf("nbd: unknown export %q", data)
			}
			tflags := c.srv.tflags()
			reply := make([]byte, 10, 134)
			binary.BigEndian.PutUint64(reply[0:], d.Size())
			binary.BigEndian.PutUint16(reply[8:], tflags)
			if !noZeroes {
				reply = reply[:134]
			}
			if _, err := c.nc.Write(reply); err != nil {
				return nil, 0, fmt.Errorf("nbd: send export info: %w", err)
			}
			return d, tflags, nil
		case proto.OptAbort:
			_ = c.optReply(opt, proto.RepAck, nil) // the client may already be gone
			return nil, 0, errAbort
		case proto.OptList:
			if err := c.list(opt, n); err != nil {
				return nil, 0, err
			}
		case proto.OptInfo, proto.OptGo:
			d, tflags, err := c.info(opt, data)
			if err != nil {
				return nil, 0, err
			}
			if d != nil && opt == proto.OptGo {
				return d, tflags, nil
			}
		default:
			if err := c.optReply(opt, proto.RepErrUnsup, []byte("option not supported")); err != nil {
				return nil, 0, err
			}
		}
	}
}

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], proto.OptReplyMagic)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	copy(b[20:], data)
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("nbd: send option %d reply: %w", opt, err)
	}
	return nil
}

func (c *conn) list(opt, n uint32) error {
	if n != 0 {
		return c.optReply(opt, proto.RepErrInvalid, []byte("NBD_OPT_LIST takes no data"))
	}
	for _, name := range c.srv.exportNames() {
		b := make([]byte, 4+len(name))
		binary.BigEndian.PutUint32(b, uint32(len(name)))
		copy(b[4:], name)
		if err := c.optReply(opt, proto.RepServer, b); err != nil {
			return err
		}
	}
	return c.optReply(opt, proto.RepAck, nil)
}

// info answers NBD_OPT_INFO and NBD_OPT_GO. It returns the device only when
// the client may move on to transmission (GO succeeded).
func (c *conn) info(opt uint32, data []byte) (blockdev.Target, uint16, error) {
	invalid := func(msg string) (blockdev.Target, uint16, error) {
		return nil, 0, c.optReply(opt, proto.RepErrInvalid, []byte(msg))
	}
	if len(data) < 6 {
		return invalid("option data too short")
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen)+6 > uint64(len(data)) {
		return invalid("export name length past the end of the option")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nreq {
		return invalid("information request count does not match the option length")
	}
	wantName := false
	for i := 0; i < nreq; i++ {
		if binary.BigEndian.Uint16(rest[2+2*i:]) == proto.InfoName {
			wantName = true
		}
	}
	d := c.srv.lookup(name)
	if d == nil {
		return nil, 0, c.optReply(opt, proto.RepErrUnknown, fmt.Appendf(nil, "no export named %q", name))
	}
	tflags := c.srv.tflags()
	var b [18]byte
	binary.BigEndian.PutUint16(b[0:], proto.InfoExport)
	binary.BigEndian.PutUint64(b[2:], d.Size())
	binary.BigEndian.PutUint16(b[10:], tflags)
	if err := c.optReply(opt, proto.RepInfo, b[:12]); err != nil {
		return nil, 0, err
	}
	if wantName {
		nb := make([]byte, 2+len(d.Name()))
		binary.BigEndian.PutUint16(nb, proto.InfoName)
		copy(nb[2:], d.Name())
		if err := c.optReply(opt, proto.RepInfo, nb); err != nil {
			return nil, 0, err
		}
	}
	// Block sizes go out whether asked or not (the protocol allows it): the
	// preferred 4 KiB tells clients to avoid read-modify-write.
	binary.BigEndian.PutUint16(b[0:], proto.InfoBlockSize)
	binary.BigEndian.PutUint32(b[2:], proto.MinBlockSize)
	binary.BigEndian.PutUint32(b[6:], proto.PreferredBlockSize)
	binary.BigEndian.PutUint32(b[10:], proto.MaxRequestSize)
	if err := c.optReply(opt, proto.RepInfo, b[:14]); err != nil {
		return nil, 0, err
	}
	if err := c.optReply(opt, proto.RepAck, nil); err != nil {
		return nil, 0, err
	}
	if opt == proto.OptGo {
		return d, tflags, nil
	}
	return nil, 0, nil
}
