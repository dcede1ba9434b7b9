package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/streams"
)

// TestInlineRepliesOverflowSocket: a client that sends 200 one-page READs
// and WRITEs before reading any reply fills the socket with the inline
// replies (800 KiB), so the reader's non-blocking writev hits EAGAIN and a
// worker finishes the send. Every reply must arrive, once, with its data.
func TestInlineRepliesOverflowSocket(t *testing.T) {
	d, err := blockdev.New(blockdev.Config{Name: "x", Size: 4 << 20, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	sock := startTestServer(t, d)
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	negotiate(t, nc, "x")
	page := func(i int) []byte {
		p := bytes.Repeat([]byte{byte(i), byte(i >> 8), 1, 2}, blockdev.PageSize/8)
		return append(p, make([]byte, blockdev.PageSize/2)...) // compressible, not same-filled
	}
	const n = 200
	var req [proto.RequestHeaderSize]byte
	send := func(typ uint16, handle uint64, i int, payload []byte) {
		binary.BigEndian.PutUint32(req[0:], proto.RequestMagic)
		binary.BigEndian.PutUint16(req[4:], 0)
		binary.BigEndian.PutUint16(req[6:], typ)
		binary.BigEndian.PutUint64(req[8:], handle)
		binary.BigEndian.PutUint64(req[16:], uint64(i)*blockdev.PageSize)
		binary.BigEndian.PutUint32(req[24:], blockdev.PageSize)
		if _, err := nc.Write(append(req[:], payload...)); err != nil {
			t.Fatal(err)
		}
	}
	readReplies := func(typ uint16, count int) {
		seen := map[uint64]bool{}
		for range count {
			var h [proto.ReplyHeaderSize]byte
			if _, err := io.ReadFull(nc, h[:]); err != nil {
				t.Fatal(err)
			}
			if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
				t.Fatalf("reply error %d", e)
			}
			handle := binary.BigEndian.Uint64(h[8:])
			if seen[handle] || handle >= n {
				t.Fatalf("unexpected handle %d", handle)
			}
			seen[handle] = true
			if typ == proto.CmdRead {
				got := make([]byte, blockdev.PageSize)
				if _, err := io.ReadFull(nc, got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, page(int(handle))) {
					t.Fatalf("page %d differs", handle)
				}
			}
		}
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	for i := range n {
		send(proto.CmdWrite, uint64(i), i, page(i))
	}
	readReplies(proto.CmdWrite, n)
	for i := range n {
		send(proto.CmdRead, uint64(i), i, nil)
	}
	time.Sleep(100 * time.Millisecond) // let the replies pile up unread
	readReplies(proto.CmdRead, n)
}
