package nbd

// Fuzz targets for the NBD server: the bytes a client sends during the
// handshake, and streams of well-formed and malformed requests. Plain
// `go test` runs the seeds below and those in testdata/fuzz/; hack/fuzz.sh
// runs each target with -fuzz for a set time.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/nbd/proto"
	"github.com/uzram/uzram/streams"
)

// fuzzServer is one server and device shared by every input of a target:
// building them per input would make fuzzing crawl.
type fuzzServer struct {
	srv *Server
	dev *blockdev.Device
}

func newFuzzServer(tb testing.TB, opts ServerOptions, size int64) *fuzzServer {
	tb.Helper()
	d, err := blockdev.New(blockdev.Config{Name: "fz", Size: size, StreamMode: streams.DefaultMode, Streams: 2})
	if err != nil {
		tb.Fatal(err)
	}
	opts.Logger = discardLogger()
	srv := NewServer(opts)
	if err := srv.AddExport(d); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return &fuzzServer{srv: srv, dev: d}
}

// waitIdle fails unless every connection has ended within the timeout: a
// server goroutine left behind after its client went away is a hang.
func (f *fuzzServer) waitIdle(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		f.srv.mu.Lock()
		n := len(f.srv.conns)
		f.srv.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d server connection(s) still running %v after the client left", n, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// FuzzHandshake feeds arbitrary client bytes to the negotiation. The first
// byte picks the server's TLS policy. Checks: no panic; the server's output
// is the greeting then well-formed option replies; the connection ends
// promptly once the client is gone.
func FuzzHandshake(f *testing.F) {
	hs := func(opts ...[]byte) []byte {
		b := []byte{0, 0, 0, 3}
		for _, o := range opts {
			b = append(b, o...)
		}
		return b
	}
	go_ := fzOption(proto.OptGo, fzInfoData("fz", proto.InfoName, proto.InfoBlockSize))
	for _, seed := range [][]byte{
		hs(go_),
		hs(fzOption(proto.OptList, nil), fzOption(proto.OptInfo, fzInfoData("fz")), go_),
		hs(fzOption(proto.OptExportName, []byte("fz"))),
		hs(fzOption(proto.OptExportName, []byte("nope"))),
		hs(fzOption(proto.OptStructuredReply, nil), fzOption(99, []byte("x")), fzOption(proto.OptAbort, nil)),
		hs(fzOption(proto.OptInfo, []byte{0, 0, 0, 50, 1}), fzOption(proto.OptGo, fzInfoData("missing"))),
		hs(fzOption(proto.OptStartTLS, nil), []byte{0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5}),
		hs(fzOption(proto.OptStartTLS, []byte{1})),
		hs(fzOption(proto.OptList, []byte("junk"))),
		{0, 0, 0, 1}, // no NO_ZEROES: EXPORT_NAME's reply is padded
		{0, 0, 0, 0xff},
		hs([]byte("IHAVEOPX")),
		hs(go_, fzRequest(proto.RequestMagic, 0, proto.CmdWrite, 1, 0, 8), []byte("payload!")),
	} {
		for policy := byte(0); policy < 3; policy++ {
			f.Add(append([]byte{policy}, seed...))
		}
	}
	servers := [3]*fuzzServer{
		newFuzzServer(f, ServerOptions{HandshakeTimeout: 5 * time.Second}, 1<<20),
		newFuzzServer(f, ServerOptions{HandshakeTimeout: 5 * time.Second, TLS: fuzzTLS(f)}, 1<<20),
		newFuzzServer(f, ServerOptions{HandshakeTimeout: 5 * time.Second, TLS: fuzzTLS(f), TLSRequired: true}, 1<<20),
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		fs := servers[int(in[0])%len(servers)]
		client, server := net.Pipe()
		fs.srv.ServeConn(server)
		var out bytes.Buffer
		read := make(chan struct{})
		go func() {
			defer close(read)
			io.Copy(&out, client)
		}()
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		client.Write(in[1:]) // the server may hang up early: fine
		client.Close()
		<-read
		fs.waitIdle(t, 5*time.Second)
		checkHandshakeOutput(t, out.Bytes())
	})
}

// checkHandshakeOutput parses the greeting and the option replies that
// follow it, up to the first thing that is not an option reply (the
// EXPORT_NAME reply, TLS records after a STARTTLS ACK, transmission replies).
func checkHandshakeOutput(t *testing.T, b []byte) {
	t.Helper()
	if len(b) < 18 || binary.BigEndian.Uint64(b) != proto.NBDMagic || binary.BigEndian.Uint64(b[8:]) != proto.OptMagic {
		t.Fatalf("bad greeting %x", b[:min(len(b), 18)])
	}
	b = b[18:]
	for len(b) >= 8 && binary.BigEndian.Uint64(b) == proto.OptReplyMagic {
		if len(b) < 20 {
			t.Fatalf("truncated option reply header %x", b)
		}
		n := binary.BigEndian.Uint32(b[16:])
		if uint64(n) > uint64(len(b)-20) {
			t.Fatalf("option reply claims %d bytes, %d follow", n, len(b)-20)
		}
		typ := binary.BigEndian.Uint32(b[12:])
		if typ&(1<<31) == 0 && typ != proto.RepAck && typ != proto.RepServer && typ != proto.RepInfo {
			t.Fatalf("unexpected option reply type %#x", typ)
		}
		b = b[20+n:]
	}
}

// FuzzRequestStream decodes its input into a sequence of requests (see
// decodeOps), sends them pipelined over one connection and checks: no
// panic, no hang, every request answered once with its own handle, the
// right outcome (success for well-formed, an error for malformed), READ
// data equal to a model, and the device equal to the model at the end.
func FuzzRequestStream(f *testing.F) {
	for _, seed := range [][]byte{
		{1, 0, 0, 3, 7, 0, 0, 0, 3, 0},
		{1, 0, 1, 15, 200, 1, 0, 40, 2, 9, 0, 0, 1, 15, 0, 2, 0, 2, 4, 0, 3, 0, 8, 15, 0, 0, 0, 8, 15, 0},
		{5, 0, 9, 7, 33, 4, 6, 0, 9, 7, 0, 0, 9, 7, 0},
		{7, 42, 8, 0, 0, 1, 9, 255, 255, 15, 1, 10, 0, 0, 0, 0, 0, 1, 1, 1},
		{1, 0, 0, 15, 3, 1, 0, 1, 15, 4, 1, 0, 2, 15, 5, 11, 1, 0, 0, 0, 0},
		{3, 1, 0, 2, 1, 131, 0, 4, 2, 1, 0, 0, 0, 15, 0, 11, 0},
		{1, 129, 0, 15, 77, 1, 130, 7, 15, 78, 0, 128, 3, 15, 0},
	} {
		f.Add(seed)
	}
	fs := newFuzzServer(f, ServerOptions{MaxInflight: 8, Workers: 3, StallTimeout: 10 * time.Second}, fuzzDevSize)
	f.Fuzz(func(t *testing.T, in []byte) {
		fs.dev.Clear()
		runStream(t, fs, decodeOps(in))
	})
}

const fuzzDevSize = 64 * blockdev.PageSize

// fzOp is one decoded request. Malformed ones get an error reply (or, for
// breakers, end the connection); well-formed ones succeed.
type fzOp struct {
	typ, flags uint16
	off        uint64
	length     uint32
	payload    []byte // sent after the header (WRITE only)
	malformed  bool
	breaker    bool // stream out of sync: the server closes after it
	barrier    bool // wait for every reply before going on
	magic      uint32
}

// decodeOps turns fuzz bytes into requests: one selector byte per request,
// then its fields. The low nibble picks the kind; bit 7 of the selector
// makes the offset unaligned.
func decodeOps(in []byte) []fzOp {
	var ops []fzOp
	take := func(n int) []byte {
		if len(in) < n {
			return nil
		}
		b := in[:n]
		in = in[n:]
		return b
	}
	const sectors = fuzzDevSize / blockdev.SectorSize
	for len(ops) < 200 {
		sel := take(1)
		if sel == nil {
			break
		}
		kind := sel[0] & 0x0f
		if kind == 6 {
			ops = append(ops, fzOp{barrier: true})
			continue
		}
		f := take(4) // offset (2), length (1), fill (1)
		if f == nil {
			break
		}
		off := uint64(binary.BigEndian.Uint16(f)%sectors) * blockdev.SectorSize
		if sel[0]&0x80 != 0 {
			off += uint64(f[3]) % blockdev.SectorSize
		}
		length := uint32(f[2]%16+1) * blockdev.SectorSize
		if sel[0]&0x40 != 0 {
			length = uint32(f[2]) + 1 // any byte count
		}
		length = uint32(min(uint64(length), fuzzDevSize-off))
		op := fzOp{off: off, length: length, magic: proto.RequestMagic}
		switch kind {
		case 0:
			op.typ = proto.CmdRead
		case 1, 5:
			op.typ, op.payload = proto.CmdWrite, fzPayload(int(length), f[3])
			if kind == 5 {
				op.flags = proto.CmdFlagFUA
			}
		case 2:
			op.typ = proto.CmdTrim
		case 3:
			op.typ = proto.CmdWriteZeroes
			if sel[0]&0x20 != 0 {
				op.flags = proto.CmdFlagNoHole
			}
		case 4:
			op.typ, op.off, op.length = proto.CmdFlush, 0, 0
		case 7: // unknown or unadvertised command
			op.typ, op.malformed = uint16(f[0]), true
			switch op.typ {
			case proto.CmdRead, proto.CmdWrite, proto.CmdDisc, proto.CmdFlush, proto.CmdTrim, proto.CmdWriteZeroes:
				op.typ = 42
			}
		case 8: // flag bits no command takes
			op.typ, op.flags, op.malformed = proto.CmdRead, 1<<(2+f[3]%14), true
		case 9: // past the end, or an offset that overflows
			op.typ, op.malformed = []uint16{proto.CmdRead, proto.CmdWrite, proto.CmdTrim, proto.CmdWriteZeroes}[f[3]%4], true
			op.off = fuzzDevSize - uint64(f[1]%8)
			if f[3]&0x10 != 0 {
				op.off = ^uint64(0) - uint64(f[1])
			}
			op.length = uint32(f[2]) + 9
			if op.typ == proto.CmdWrite {
				op.payload = fzPayload(int(op.length), f[3])
			}
		case 10: // FLUSH with a range
			op.typ, op.off, op.length, op.malformed = proto.CmdFlush, uint64(f[0]), uint32(f[1])+1, true
		case 11: // the stream breaks: bad magic or a WRITE too large to read past
			op.breaker = true
			if f[3]&1 == 0 {
				op.magic = 0x25609514
			} else {
				op.typ, op.length = proto.CmdWrite, proto.MaxRequestSize+1+uint32(f[2])
			}
			ops = append(ops, op)
			return ops
		case 12: // WRITE_ZEROES with FUA and NO_HOLE
			op.typ, op.flags = proto.CmdWriteZeroes, proto.CmdFlagFUA|proto.CmdFlagNoHole
		default: // READ with FUA (allowed)
			op.typ, op.flags = proto.CmdRead, proto.CmdFlagFUA
		}
		ops = append(ops, op)
	}
	return ops
}

// fzPayload makes n bytes of one of several kinds (zeros, same-filled,
// compressible, incompressible), so every storage path runs.
func fzPayload(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		switch seed % 4 {
		case 0:
		case 1:
			b[i] = seed
		case 2:
			b[i] = byte(i/64) ^ seed
		default:
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			b[i] = byte(x)
		}
	}
	return b
}

func fzRequest(magic uint32, flags, typ uint16, handle, off uint64, n uint32) []byte {
	b := make([]byte, proto.RequestHeaderSize)
	binary.BigEndian.PutUint32(b, magic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], n)
	return b
}

func fzOption(opt uint32, data []byte) []byte {
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint64(b, proto.OptMagic)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	return append(b, data...)
}

func fzInfoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

type fzReply struct {
	code   uint32
	handle uint64
	data   []byte
}

// runStream negotiates, sends ops with pipelining, and checks replies and
// the final contents against a model. Requests that touch pages another
// request in flight writes are preceded by a barrier, so the model is exact
// while unrelated requests still overlap.
func runStream(t *testing.T, fs *fuzzServer, ops []fzOp) {
	client, server := net.Pipe()
	fs.srv.ServeConn(server)
	defer func() {
		client.Close()
		fs.waitIdle(t, 10*time.Second)
	}()
	client.SetDeadline(time.Now().Add(20 * time.Second)) // a hang fails, never blocks the fuzzer
	br := bufio.NewReader(client)
	if err := fzNegotiate(client, br); err != nil {
		t.Fatal(err)
	}

	model := make([]byte, fuzzDevSize)
	var mu sync.Mutex
	readLen := map[uint64]int{} // in-flight READs: how much data their success carries
	replies := make(chan fzReply, 256)
	readErr := make(chan error, 1)
	go func() {
		for {
			var h [proto.ReplyHeaderSize]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				readErr <- err
				close(replies)
				return
			}
			if m := binary.BigEndian.Uint32(h[:]); m != proto.ReplyMagic {
				readErr <- fmt.Errorf("bad reply magic %#x", m)
				close(replies)
				return
			}
			r := fzReply{code: binary.BigEndian.Uint32(h[4:]), handle: binary.BigEndian.Uint64(h[8:])}
			mu.Lock()
			n, isRead := readLen[r.handle]
			mu.Unlock()
			if isRead && r.code == 0 {
				r.data = make([]byte, n)
				if _, err := io.ReadFull(br, r.data); err != nil {
					readErr <- fmt.Errorf("read payload of handle %d: %w", r.handle, err)
					close(replies)
					return
				}
			}
			replies <- r
		}
	}()

	type sent struct {
		op     fzOp
		expect []byte // a READ's expected data, fixed when sent
	}
	inflight := map[uint64]sent{}
	written := map[uint64]bool{} // pages written by requests in flight
	readPages := map[uint64]bool{}
	next := uint64(1000)
	collect := func() {
		for len(inflight) > 0 {
			r, ok := <-replies
			if !ok {
				t.Fatalf("connection lost with %d requests unanswered: %v", len(inflight), <-readErr)
			}
			s, known := inflight[r.handle]
			if !known {
				t.Fatalf("reply for handle %d, which is not in flight", r.handle)
			}
			delete(inflight, r.handle)
			switch {
			case s.op.malformed && r.code == 0:
				t.Fatalf("malformed request %+v succeeded", s.op)
			case !s.op.malformed && r.code != 0:
				t.Fatalf("request %+v failed with %d", s.op, r.code)
			case s.expect != nil && !bytes.Equal(r.data, s.expect):
				t.Fatalf("READ %d bytes at %d differs from the model", s.op.length, s.op.off)
			}
		}
		if len(inflight) == 0 {
			clear(written)
			clear(readPages)
		}
	}
	pages := func(op fzOp) (uint64, uint64) {
		if op.length == 0 || op.malformed {
			return 1, 0 // empty range
		}
		return op.off / blockdev.PageSize, (op.off + uint64(op.length) - 1) / blockdev.PageSize
	}
	for _, op := range ops {
		if op.barrier {
			collect()
			continue
		}
		if op.breaker {
			hdr := fzRequest(op.magic, 0, op.typ, next, 0, op.length)
			if _, err := client.Write(hdr); err != nil {
				t.Fatalf("send: %v", err)
			}
			collect() // everything before it is still answered
			if r, ok := <-replies; ok {
				t.Fatalf("reply %+v after a broken request", r)
			}
			return
		}
		first, last := pages(op)
		mutates := op.typ == proto.CmdWrite || op.typ == proto.CmdTrim || op.typ == proto.CmdWriteZeroes
		for p := first; p <= last; p++ {
			if written[p] || mutates && readPages[p] {
				collect()
				break
			}
		}
		next++
		s := sent{op: op}
		if !op.malformed {
			end := op.off + uint64(op.length)
			switch op.typ {
			case proto.CmdRead:
				s.expect = bytes.Clone(model[op.off:end])
			case proto.CmdWrite:
				copy(model[op.off:end], op.payload)
			case proto.CmdTrim, proto.CmdWriteZeroes:
				clear(model[op.off:end])
			}
			for p := first; p <= last; p++ {
				if mutates {
					written[p] = true
				} else {
					readPages[p] = true
				}
			}
		}
		inflight[next] = s
		if op.typ == proto.CmdRead {
			mu.Lock()
			readLen[next] = int(op.length)
			mu.Unlock()
		}
		b := append(fzRequest(op.magic, op.flags, op.typ, next, op.off, op.length), op.payload...)
		if _, err := client.Write(b); err != nil {
			t.Fatalf("send %+v: %v", op, err)
		}
	}
	collect()
	client.Write(fzRequest(proto.RequestMagic, 0, proto.CmdDisc, 0, 0, 0))
	got := make([]byte, fuzzDevSize)
	// DISC ends the connection once its requests are answered; the device
	// is then read directly.
	fs.waitIdle(t, 10*time.Second)
	if err := fs.dev.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, model); i >= 0 {
		t.Fatalf("device differs from the model at byte %d", i)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// fzNegotiate is a minimal client handshake: NO_ZEROES and OPT_GO.
func fzNegotiate(nc net.Conn, br io.Reader) error {
	if br == nil {
		br = nc // unbuffered: reads nothing past the handshake
	}
	var hello [18]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	// The empty name is the default export, whatever the server calls it.
	if _, err := nc.Write(append([]byte{0, 0, 0, 3}, fzOption(proto.OptGo, fzInfoData(""))...)); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return fmt.Errorf("option reply: %w", err)
		}
		if _, err := io.CopyN(io.Discard, br, int64(binary.BigEndian.Uint32(h[16:]))); err != nil {
			return err
		}
		switch typ := binary.BigEndian.Uint32(h[12:]); {
		case typ == proto.RepAck:
			return nil
		case typ&(1<<31) != 0:
			return errors.New("GO refused")
		}
	}
}
