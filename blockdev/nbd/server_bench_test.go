package nbd

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/streams"
)

// benchNBD pipelines b.N requests of one type and size (n pages) through a
// real unix socket, with a client that allocates nothing, so -benchmem's
// allocs/op is the server's own per-request allocation.
func benchNBD(b *testing.B, typ uint16, depth, n int) {
	d, err := blockdev.New(blockdev.Config{Name: "b", Size: 256 << 20, StreamMode: streams.DefaultMode})
	if err != nil {
		b.Fatal(err)
	}
	sock := startTestServerTB(b, d) // closes d after the server drains
	nc, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	negotiate(b, nc, "b")
	const pages = 256 << 20 / blockdev.PageSize
	// 64 requests with pages of fio-like "50% compressible" data whose
	// compressed sizes vary, so overwrites move objects between size
	// classes as real traffic does.
	const variants = 64
	reqs := make([][]byte, variants)
	r := rand.New(rand.NewPCG(1, 2))
	for v := range reqs {
		req := make([]byte, proto.RequestHeaderSize+n*blockdev.PageSize)
		for p := 0; p < n; p++ {
			page := req[proto.RequestHeaderSize+p*blockdev.PageSize:][:blockdev.PageSize]
			for i := range page {
				page[i] = byte(r.Uint32())
			}
			clear(page[:blockdev.PageSize/4+r.IntN(blockdev.PageSize/2)])
		}
		binary.BigEndian.PutUint32(req, proto.RequestMagic)
		binary.BigEndian.PutUint16(req[6:], typ)
		binary.BigEndian.PutUint32(req[24:], uint32(n*blockdev.PageSize))
		reqs[v] = req
	}
	replyLen := proto.ReplyHeaderSize
	if typ == proto.CmdRead {
		replyLen += n * blockdev.PageSize
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
	for i := 0; i < pages; i += n { // fill, so reads decompress and writes overwrite
		if err := d.WriteAt(reqs[i/n%variants][proto.RequestHeaderSize:], uint64(i)*blockdev.PageSize, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(n * blockdev.PageSize))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tokens <- struct{}{}
		req := reqs[i%variants]
		wire := req
		if typ != proto.CmdWrite {
			wire = req[:proto.RequestHeaderSize]
		}
		binary.BigEndian.PutUint64(req[8:], uint64(i))
		binary.BigEndian.PutUint64(req[16:], uint64(i*7919%(pages/n)*n)*blockdev.PageSize)
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
	binary.BigEndian.PutUint32(msg, proto.ClientFixedNewstyle|proto.ClientNoZeroes)
	binary.BigEndian.PutUint64(msg[4:], proto.OptMagic)
	binary.BigEndian.PutUint32(msg[12:], proto.OptGo)
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
		case typ == proto.RepAck:
			return
		case typ&(1<<31) != 0:
			tb.Fatalf("GO refused: %s", data)
		}
	}
}

func BenchmarkNBDWrite4kQD32(b *testing.B) { benchNBD(b, proto.CmdWrite, 32, 1) }
func BenchmarkNBDRead4kQD32(b *testing.B)  { benchNBD(b, proto.CmdRead, 32, 1) }
func BenchmarkNBDWrite4kQD1(b *testing.B)  { benchNBD(b, proto.CmdWrite, 1, 1) }

// Requests larger than a page: WRITEs stored off the socket page by page,
// READs streamed (1 MiB: eight chunks), with no buffer per request.
func BenchmarkNBDWrite128kQD32(b *testing.B) { benchNBD(b, proto.CmdWrite, 32, 32) }
func BenchmarkNBDRead128kQD32(b *testing.B)  { benchNBD(b, proto.CmdRead, 32, 32) }
func BenchmarkNBDRead1MQD8(b *testing.B)     { benchNBD(b, proto.CmdRead, 8, 256) }
