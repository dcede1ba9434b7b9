package proto

import (
	"encoding/binary"
	"testing"
)

func header(magic uint32, flags, typ uint16, off uint64, n uint32) []byte {
	b := make([]byte, RequestHeaderSize)
	binary.BigEndian.PutUint32(b, magic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], 42)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], n)
	return b
}

func TestParseAndValidate(t *testing.T) {
	const size = 1 << 20
	flags := DefaultTransmissionFlags
	cases := []struct {
		name     string
		hdr      []byte
		parseErr bool
		code     uint32
	}{
		{"read", header(RequestMagic, 0, CmdRead, 0, 4096), false, 0},
		{"read fua", header(RequestMagic, CmdFlagFUA, CmdRead, 0, 4096), false, 0},
		{"write at end", header(RequestMagic, 0, CmdWrite, size-512, 512), false, 0},
		{"bad magic", header(0x12345678, 0, CmdRead, 0, 4096), true, 0},
		{"huge write", header(RequestMagic, 0, CmdWrite, 0, MaxRequestSize+1), true, 0},
		{"huge read", header(RequestMagic, 0, CmdRead, 0, MaxRequestSize+1), false, ErrInval},
		{"past end", header(RequestMagic, 0, CmdRead, size, 1), false, ErrInval},
		{"overflow", header(RequestMagic, 0, CmdWrite, ^uint64(0)-100, 4096), false, ErrInval},
		{"unknown command", header(RequestMagic, 0, 99, 0, 4096), false, ErrInval},
		{"cache unsupported", header(RequestMagic, 0, 5, 0, 4096), false, ErrInval},
		{"flush with range", header(RequestMagic, 0, CmdFlush, 4096, 0), false, ErrInval},
		{"flush", header(RequestMagic, 0, CmdFlush, 0, 0), false, 0},
		{"trim", header(RequestMagic, 0, CmdTrim, 0, size), false, 0},
		{"zeroes no hole", header(RequestMagic, CmdFlagNoHole, CmdWriteZeroes, 0, 8192), false, 0},
		{"no hole on write", header(RequestMagic, CmdFlagNoHole, CmdWrite, 0, 512), false, ErrInval},
		{"unknown flag", header(RequestMagic, 1<<9, CmdRead, 0, 512), false, ErrInval},
		{"short", header(RequestMagic, 0, CmdRead, 0, 512)[:20], true, 0},
	}
	for _, c := range cases {
		r, err := ParseRequest(c.hdr)
		if (err != nil) != c.parseErr {
			t.Errorf("%s: parse error %v, want error %v", c.name, err, c.parseErr)
			continue
		}
		if err != nil {
			continue
		}
		if got := r.Validate(size, flags); got != c.code {
			t.Errorf("%s: Validate = %d, want %d", c.name, got, c.code)
		}
	}
	ro := header(RequestMagic, 0, CmdWrite, 0, 512)
	r, _ := ParseRequest(ro)
	if got := r.Validate(size, flags|TFlagReadOnly); got != ErrPerm {
		t.Errorf("write on read-only export: %d, want EPERM", got)
	}
}

// FuzzParseRequest checks that no header crashes the parser and that a
// request Validate accepts never reaches past the end of the device.
func FuzzParseRequest(f *testing.F) {
	f.Add(header(RequestMagic, 0, CmdRead, 0, 4096), uint64(1<<20))
	f.Add(header(RequestMagic, CmdFlagNoHole, CmdWriteZeroes, 4096, 1<<20), uint64(8<<20))
	f.Add(header(RequestMagic, 0, CmdWrite, ^uint64(0), 1), uint64(1<<30))
	f.Add(header(0, 0, 0, 0, 0), uint64(0))
	f.Add(header(RequestMagic, 0, CmdWrite, 0, MaxRequestSize+1), uint64(1<<30))
	f.Fuzz(func(t *testing.T, hdr []byte, size uint64) {
		r, err := ParseRequest(hdr)
		if err != nil {
			return
		}
		if r.PayloadLen() > MaxRequestSize {
			t.Fatalf("parser accepted a %d byte payload", r.PayloadLen())
		}
		if r.Validate(size, DefaultTransmissionFlags) != 0 && r.Type != CmdDisc && r.Type != CmdFlush {
			return
		}
		if r.Type != CmdDisc && r.Type != CmdFlush && (r.Offset > size || r.Offset+uint64(r.Length) > size || r.Offset+uint64(r.Length) < r.Offset) {
			t.Fatalf("accepted request %+v past the end of a %d byte device", r, size)
		}
	})
}
