package blockdev

import (
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/uzram/uzram/streams"
)

// benchNBD pipelines b.N requests of one type through a real unix socket,
// with a client that allocates nothing, so -benchmem's allocs/op is the
// server's own per-request allocation.
func benchNBD(b *testing.B, typ uint16, depth int) {
	d, err := New(Config{Name: "b", Size: 256 << 20, StreamMode: streams.DefaultMode})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	sock := startTestServerTB(b, d)
	nc, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	negotiate(b, nc, "b")
	const pages = 256 << 20 / PageSize
	req := make([]byte, requestHeaderSize+PageSize)
	for i := requestHeaderSize; i < len(req); i += 2 {
		req[i] = byte(i * 7) // half-compressible
	}
	binary.BigEndian.PutUint32(req, requestMagic)
	binary.BigEndian.PutUint16(req[6:], typ)
	binary.BigEndian.PutUint32(req[24:], PageSize)
	wire := req
	if typ != cmdWrite {
		wire = req[:requestHeaderSize]
	}
	replyLen := replyHeaderSize
	if typ == cmdRead {
		replyLen += PageSize
	}
	tokens := make(chan struct{}, depth)
	done := make(chan error, 1)
	go func() {
		reply := make([]byte, replyLen)
		for i := 0; i < b.N; i++ {
			if _, err := io.ReadFull(nc, reply); err != nil {
				done <- err
				return
			}
			if binary.BigEndian.Uint32(reply[4:]) != 0 {
				done <- io.ErrUnexpectedEOF
				return
			}
			<-tokens
		}
		done <- nil
	}()
	b.SetBytes(PageSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tokens <- struct{}{}
		binary.BigEndian.PutUint64(req[8:], uint64(i))
		binary.BigEndian.PutUint64(req[16:], uint64(i*7919%pages)*PageSize)
		if _, err := nc.Write(wire); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func negotiate(tb testing.TB, nc net.Conn, name string) {
	var hello [18]byte
	if _, err := io.ReadFull(nc, hello[:]); err != nil {
		tb.Fatal(err)
	}
	msg := make([]byte, 4+16+4+len(name)+2)
	binary.BigEndian.PutUint32(msg, clientFixedNewstyle|clientNoZeroes)
	binary.BigEndian.PutUint64(msg[4:], optMagic)
	binary.BigEndian.PutUint32(msg[12:], optGo)
	binary.BigEndian.PutUint32(msg[16:], uint32(4+len(name)+2))
	binary.BigEndian.PutUint32(msg[20:], uint32(len(name)))
	copy(msg[24:], name)
	if _, err := nc.Write(msg); err != nil {
		tb.Fatal(err)
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(nc, h[:]); err != nil {
			tb.Fatal(err)
		}
		data := make([]byte, binary.BigEndian.Uint32(h[16:]))
		io.ReadFull(nc, data)
		switch typ := binary.BigEndian.Uint32(h[12:]); {
		case typ == repAck:
			return
		case typ&(1<<31) != 0:
			tb.Fatalf("GO refused: %s", data)
		}
	}
}

func BenchmarkNBDWrite4kQD32(b *testing.B) { benchNBD(b, cmdWrite, 32) }
func BenchmarkNBDRead4kQD32(b *testing.B)  { benchNBD(b, cmdRead, 32) }
func BenchmarkNBDWrite4kQD1(b *testing.B)  { benchNBD(b, cmdWrite, 1) }
