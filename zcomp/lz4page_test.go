package zcomp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// lz4PageAccels are the accelerations the encoder tests cover: the default,
// a few zram levels, and LZ4_ACCELERATION_MAX.
var lz4PageAccels = []int{1, 2, 8, 100, lz4MaxAcceleration}

// lz4SpecCheck decodes block by the letter of lz4_Block_format.md and checks
// that it gives want. It is stricter than pierrec's decoder: it also checks
// the end-of-block rules a conforming encoder follows (the last sequence has
// no match, the last match starts at least 12 bytes before the end and the
// last 5 bytes are literals), which other decoders, the kernel's among
// them, may rely on.
// It returns the largest offset used.
func lz4SpecCheck(block, want []byte) (maxOff int, err error) {
	return lz4SpecCheckDict(block, want, nil)
}

// lz4SpecCheckDict is lz4SpecCheck for a block compressed against dict:
// offsets may reach back into it, as if it preceded the output.
func lz4SpecCheckDict(block, want, dict []byte) (maxOff int, err error) {
	out := slices.Clone(dict)
	base := len(dict)
	lastStart, lastEnd := -1, -1 // the last match, in output positions
	readLen := func(i, n int) (int, int, error) {
		if n != 15 {
			return i, n, nil
		}
		for {
			if i >= len(block) {
				return 0, 0, errors.New("length runs past the block")
			}
			b := block[i]
			i++
			n += int(b)
			if b != 255 {
				return i, n, nil
			}
		}
	}
	i := 0
	for {
		if i >= len(block) {
			return 0, errors.New("block ends without a last sequence")
		}
		tok := block[i]
		i++
		var lit int
		if i, lit, err = readLen(i, int(tok>>4)); err != nil {
			return 0, err
		}
		if lit > len(block)-i {
			return 0, fmt.Errorf("%d literals run past the block", lit)
		}
		out = append(out, block[i:i+lit]...)
		i += lit
		if i == len(block) {
			break // the last sequence: literals only
		}
		if len(block)-i < 2 {
			return 0, errors.New("offset runs past the block")
		}
		off := int(binary.LittleEndian.Uint16(block[i:]))
		i += 2
		if off == 0 || off > len(out) {
			return 0, fmt.Errorf("offset %d at output %d", off, len(out)-base)
		}
		var ml int
		if i, ml, err = readLen(i, int(tok&15)); err != nil {
			return 0, err
		}
		ml += 4
		maxOff = max(maxOff, off)
		lastStart = len(out) - base
		for k := 0; k < ml; k++ {
			out = append(out, out[len(out)-off])
		}
		lastEnd = len(out) - base
	}
	if out = out[base:]; !bytes.Equal(out, want) {
		return 0, fmt.Errorf("decodes to %d bytes that differ from the input (%d bytes)", len(out), len(want))
	}
	if lastStart >= 0 && (lastStart > len(out)-lz4MFLimit || lastEnd > len(out)-lz4LastLiterals) {
		return 0, fmt.Errorf("last match [%d, %d) of %d bytes breaks the end-of-block rules", lastStart, lastEnd, len(out))
	}
	return maxOff, nil
}

// lz4PageEncode compresses src with a fresh encoder into a dst that always
// fits, checks the block against the spec and pierrec's decoder, and
// returns it.
func lz4PageEncode(tb testing.TB, src []byte, accel int) []byte {
	tb.Helper()
	var e lz4PageEncoder
	dst := make([]byte, lz4.CompressBlockBound(len(src)))
	n, err := e.compress(dst, src, accel)
	if err != nil {
		tb.Fatalf("%d bytes, accel %d: %v", len(src), accel, err)
	}
	block := dst[:n]
	if _, err := lz4SpecCheck(block, src); err != nil {
		tb.Fatalf("%d bytes, accel %d: %v", len(src), accel, err)
	}
	out := make([]byte, len(src)+64)
	m, err := lz4.UncompressBlock(block, out)
	if err != nil || !bytes.Equal(out[:m], src) {
		tb.Fatalf("%d bytes, accel %d: pierrec's decoder: %d bytes back, %v", len(src), accel, m, err)
	}
	return block
}

// lz4PageInputs is the round-trip corpus: every kind of page, short inputs,
// runs, lengths around the end-of-block limits, and 64 KiB inputs.
func lz4PageInputs(tb testing.TB) []pageKind {
	var in []pageKind
	add := func(name string, b []byte) { in = append(in, pageKind{name, b}) }
	for _, pk := range testPages(tb) {
		add(pk.name, pk.data)
	}
	r := rand.New(rand.NewSource(11))
	// Real machine code: pages spread over the Go tool.
	bin, err := os.ReadFile(binaryFile(tb))
	if err != nil {
		tb.Fatal(err)
	}
	step := max(len(bin)/PageSize/64, 1) * PageSize
	for off := 0; off+PageSize <= len(bin); off += step {
		add(fmt.Sprintf("binary@%d", off), bin[off:off+PageSize])
	}
	text, err := os.ReadFile(textFile())
	if err != nil {
		tb.Fatal(err)
	}
	// fio-like: half random, half zeros, both ways round.
	fio := randomBytes(12, PageSize)
	clear(fio[PageSize/2:])
	add("fio", fio)
	fio2 := randomBytes(13, PageSize)
	clear(fio2[:PageSize/2])
	add("fio-reversed", fio2)
	// Short inputs, of every kind.
	for n := 0; n <= 64; n++ {
		add(fmt.Sprintf("zeros%d", n), make([]byte, n))
		add(fmt.Sprintf("text%d", n), text[:n])
		add(fmt.Sprintf("random%d", n), randomBytes(int64(n), n))
		add(fmt.Sprintf("abab%d", n), bytes.Repeat([]byte("ab"), n)[:n])
	}
	// Runs: long ones (length bytes of 255s), ones that end right at the
	// limits, and alternations of runs and noise.
	for _, n := range []int{255, 256, 270, 271, 272, 526, 527, 1000, PageSize} {
		add(fmt.Sprintf("run%d", n), bytes.Repeat([]byte{'x'}, n))
	}
	runs := make([]byte, PageSize)
	for i := 0; i < len(runs); {
		k := 1 + r.Intn(300)
		if r.Intn(2) == 0 {
			for j := i; j < min(i+k, len(runs)); j++ {
				runs[j] = byte(r.Intn(256))
			}
		} else {
			b := byte(r.Intn(4))
			for j := i; j < min(i+k, len(runs)); j++ {
				runs[j] = b
			}
		}
		i += k
	}
	add("runs", runs)
	// Noise with one long repeat ending at each distance from the end, so
	// the last match meets MFLIMIT and LASTLITERALS in every position.
	for tail := 0; tail <= 20; tail++ {
		b := randomBytes(100+int64(tail), 200)
		copy(b[200-tail-64:], b[10:74])
		add(fmt.Sprintf("repeat-tail%d", tail), b)
	}
	// Lengths at the 15-length and 255-extension boundaries, and around a
	// page and the 64 KiB cap.
	for _, n := range []int{12, 13, 14, 15, 16, 17, 18, 19, 20, 269, 270, 271, 4095, 4097, 65535, lz4PageMaxInput} {
		b := make([]byte, n)
		for i := range b {
			b[i] = text[i%len(text)]
		}
		add(fmt.Sprintf("text-len%d", n), b)
		add(fmt.Sprintf("random-len%d", n), randomBytes(int64(n), n))
	}
	big := make([]byte, lz4PageMaxInput)
	for i := 0; i+PageSize <= len(big); i += PageSize {
		copy(big[i:], bin[(i*7)%(len(bin)-PageSize):][:PageSize])
	}
	add("binary-64KiB", big)
	// A repeat 65456 bytes back, about the farthest a 64 KiB input allows
	// (the format's limit is 65535, but a match starts 12 bytes before the
	// end): noise, zeros, the same noise.
	far := make([]byte, lz4PageMaxInput)
	copy(far, randomBytes(21, 68))
	copy(far[lz4PageMaxInput-80:], far[:68])
	add("offset-far", far)
	return in
}

func TestLZ4PageRoundTrip(t *testing.T) {
	for _, pk := range lz4PageInputs(t) {
		for _, accel := range lz4PageAccels {
			lz4PageEncode(t, pk.data, accel)
		}
	}
}

// TestLZ4PageRatio pins the encoder to the compression it should get: about
// LZ4_compress_default's, close to pierrec's Compressor.
func TestLZ4PageRatio(t *testing.T) {
	pages := map[string][]byte{}
	for _, pk := range testPages(t) {
		pages[pk.name] = pk.data
	}
	for name, max := range map[string]int{"zeros": 40, "text": PageSize * 3 / 4, "binary": PageSize * 3 / 4, "half": PageSize * 7 / 8} {
		if n := len(lz4PageEncode(t, pages[name], 1)); n > max {
			t.Errorf("%s: %d bytes, want <= %d", name, n, max)
		}
	}
	// The far repeat is found.
	in := lz4PageInputs(t)
	far := in[slices.IndexFunc(in, func(pk pageKind) bool { return pk.name == "offset-far" })].data
	if off, _ := lz4SpecCheck(lz4PageEncode(t, far, 1), far); off != lz4PageMaxInput-80 {
		t.Errorf("offset-far: largest offset %d, want %d", off, lz4PageMaxInput-80)
	}
}

// TestLZ4PageNoSpace tries every dst shorter than the block: each must fail
// with ErrNoSpace, write nothing past len(dst), and the exact length must
// give the same block.
func TestLZ4PageNoSpace(t *testing.T) {
	var e lz4PageEncoder
	for _, pk := range lz4PageInputs(t) {
		if len(pk.data) > PageSize || strings.HasPrefix(pk.name, "binary@") && pk.name[len(pk.name)-1]%4 != 0 {
			continue // keep the run short: a page at most, a quarter of the binary pages
		}
		for _, accel := range []int{1, 8} {
			want := lz4PageEncode(t, pk.data, accel)
			for size := 0; size < len(want); size++ {
				dst, ok := canaryDst(size)
				n, err := e.compress(dst, pk.data, accel)
				if !errors.Is(err, ErrNoSpace) || n != 0 {
					t.Fatalf("%s accel %d: %d-byte block into %d: n=%d err=%v, want ErrNoSpace", pk.name, accel, len(want), size, n, err)
				}
				if !ok() {
					t.Fatalf("%s accel %d: wrote past a %d-byte dst", pk.name, accel, size)
				}
			}
			dst, ok := canaryDst(len(want))
			n, err := e.compress(dst, pk.data, accel)
			if err != nil || !bytes.Equal(dst[:n], want) || !ok() {
				t.Fatalf("%s accel %d: into exactly %d bytes: n=%d err=%v", pk.name, accel, len(want), n, err)
			}
		}
	}
}

// TestLZ4PageDeterministic: the block depends on the input and acceleration
// only, not on what the encoder compressed before.
func TestLZ4PageDeterministic(t *testing.T) {
	in := lz4PageInputs(t)
	var used lz4PageEncoder
	r := rand.New(rand.NewSource(5))
	dst := make([]byte, lz4.CompressBlockBound(lz4PageMaxInput))
	for i := 0; i < 300; i++ {
		pk := in[r.Intn(len(in))]
		accel := lz4PageAccels[r.Intn(len(lz4PageAccels))]
		n, err := used.compress(dst, pk.data, accel)
		if err != nil {
			t.Fatal(err)
		}
		if want := lz4PageEncode(t, pk.data, accel); !bytes.Equal(dst[:n], want) {
			t.Fatalf("%s accel %d: a used encoder's block differs from a fresh one's", pk.name, accel)
		}
	}
}

// TestLZ4PageLevels checks the backend's wiring: level N is acceleration N,
// level 0 is 1, and inputs over 64 KiB go to pierrec and still round-trip.
func TestLZ4PageLevels(t *testing.T) {
	text := testPages(t)[1].data
	for _, level := range []int{0, 1, 2, 8, lz4MaxAcceleration} {
		c := newCtx(t, "lz4", Params{Level: level})
		dst := make([]byte, 2*PageSize)
		n, err := c.Compress(dst, text)
		if err != nil {
			t.Fatal(err)
		}
		if want := lz4PageEncode(t, text, max(level, 1)); !bytes.Equal(dst[:n], want) {
			t.Errorf("level %d: not the page encoder at acceleration %d", level, max(level, 1))
		}
		big := bytes.Repeat(text, 20) // 80 KiB
		comp := make([]byte, lz4.CompressBlockBound(len(big)))
		n, err = c.Compress(comp, big)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]byte, len(big))
		if m, err := c.Decompress(out, comp[:n]); err != nil || !bytes.Equal(out[:m], big) {
			t.Fatalf("level %d: 80 KiB input: %v", level, err)
		}
		if n, err := c.Compress(make([]byte, 100), big); !errors.Is(err, ErrNoSpace) {
			t.Errorf("level %d: 80 KiB into 100 bytes: n=%d err=%v", level, n, err)
		}
	}
}

func TestLZ4PageZeroAlloc(t *testing.T) {
	if testing.Short() {
		t.Skip("alloc counts need a quiet run")
	}
	pages := testPages(t)
	text, random := pages[1].data, pages[2].data
	var e lz4PageEncoder
	dst := make([]byte, 2*PageSize)
	small := make([]byte, hugeThreshold)
	for _, tc := range []struct {
		what string
		f    func()
	}{
		{"text", func() { _, _ = e.compress(dst, text, 1) }},
		{"random ErrNoSpace", func() { _, _ = e.compress(small, random, 1) }},
		{"random fits", func() { _, _ = e.compress(dst, random, 1) }},
	} {
		if a := testing.AllocsPerRun(100, tc.f); a != 0 {
			t.Errorf("%s: %.1f allocs/op, want 0", tc.what, a)
		}
	}
}

// TestLZ4PageLiblz4 decodes the corpus with the reference decoder,
// liblz4's LZ4_decompress_safe, where python3 and liblz4 are installed (the
// CLI reads frames only; ctypes calls the block decoder directly).
func TestLZ4PageLiblz4(t *testing.T) {
	var blocks []liblz4Block
	for _, pk := range lz4PageInputs(t) {
		for _, accel := range []int{1, 8} {
			blocks = append(blocks, liblz4Block{block: lz4PageEncode(t, pk.data, accel), want: pk.data})
		}
	}
	checkLiblz4(t, blocks)
}

// liblz4Block is one block for checkLiblz4: what it must decode to, and the
// dictionary it was compressed against (nil for none).
type liblz4Block struct {
	block, want, dict []byte
}

// liblz4Check decodes each record of its input file with liblz4 through
// ctypes: LZ4_decompress_safe, or LZ4_decompress_safe_usingDict for a block
// with a dictionary.
const liblz4Check = `
import ctypes, ctypes.util, struct, sys
name = ctypes.util.find_library("lz4") or "liblz4.so.1"
try:
    lib = ctypes.CDLL(name)
except OSError:
    print("SKIP no liblz4"); sys.exit(0)
data = open(sys.argv[1], "rb").read()
i = k = 0
while i < len(data):
    ulen, clen, dlen = struct.unpack_from("<III", data, i); i += 12
    block = data[i:i+clen]; i += clen
    want = data[i:i+ulen]; i += ulen
    d = data[i:i+dlen]; i += dlen
    out = ctypes.create_string_buffer(ulen + 1)
    if dlen:
        n = lib.LZ4_decompress_safe_usingDict(block, out, clen, ulen, d, dlen)
    else:
        n = lib.LZ4_decompress_safe(block, out, clen, ulen)
    if n != ulen or out.raw[:ulen] != want:
        print("FAIL case %d: %d-byte block gave %d, want %d" % (k, clen, n, ulen)); sys.exit(1)
    k += 1
print("OK %d" % k)
`

// checkLiblz4 has the reference decoder, liblz4, decode every block, and
// skips where python3 or liblz4 is missing.
func checkLiblz4(t *testing.T, blocks []liblz4Block) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	var buf bytes.Buffer
	for _, b := range blocks {
		for _, v := range []int{len(b.want), len(b.block), len(b.dict)} {
			buf.Write(binary.LittleEndian.AppendUint32(nil, uint32(v)))
		}
		buf.Write(b.block)
		buf.Write(b.want)
		buf.Write(b.dict)
	}
	dir := t.TempDir()
	data, prog := filepath.Join(dir, "blocks"), filepath.Join(dir, "check.py")
	if err := os.WriteFile(data, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, []byte(liblz4Check), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, prog, data).CombinedOutput()
	res := strings.TrimSpace(string(out))
	switch {
	case strings.HasPrefix(res, "SKIP"):
		t.Skip(res)
	case err != nil || res != fmt.Sprintf("OK %d", len(blocks)):
		t.Fatalf("liblz4 (%s): %v: %s", runtime.GOOS, err, res)
	}
}

// FuzzLZ4PageRoundTrip encodes arbitrary input at an arbitrary acceleration
// and checks the block against the spec and pierrec's decoder, then that a
// dst one byte short fails cleanly.
// Run it with: go test -fuzz=FuzzLZ4PageRoundTrip -fuzztime=60s ./zcomp/
func FuzzLZ4PageRoundTrip(f *testing.F) {
	for _, pk := range testPages(f) {
		f.Add(pk.data, uint16(1))
	}
	f.Add(bytes.Repeat([]byte("abcd"), 100), uint16(1))
	f.Add(bytes.Repeat([]byte{0}, 13), uint16(1))
	f.Add([]byte("0123456789abcdef0123456789abcdef"), uint16(2))
	f.Add(randomBytes(3, 300), uint16(65535))
	var e lz4PageEncoder
	f.Fuzz(func(t *testing.T, src []byte, accel uint16) {
		if len(src) > lz4PageMaxInput {
			src = src[:lz4PageMaxInput]
		}
		a := int(accel)%lz4MaxAcceleration + 1
		block := lz4PageEncode(t, src, a)
		dst, ok := canaryDst(len(block) - 1)
		if n, err := e.compress(dst, src, a); !errors.Is(err, ErrNoSpace) || n != 0 || !ok() {
			t.Fatalf("into %d bytes, one short: n=%d err=%v canary=%v", len(block)-1, n, err, ok())
		}
	})
}
