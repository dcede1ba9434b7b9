package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

const testSize = 4 << 20

func newDev(t testing.TB, name, algo string) *blockdev.Device {
	t.Helper()
	d, err := blockdev.New(blockdev.Config{Name: name, Size: testSize, Algorithm: algo, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// fill writes a mix of every page kind, under two algorithms (a switch in
// the middle), and returns the expected device contents.
func fill(t testing.TB, d *blockdev.Device) []byte {
	t.Helper()
	model := make([]byte, testSize)
	r := rand.New(rand.NewPCG(7, 9))
	write := func(page int, data []byte) {
		if err := d.WriteAt(data, uint64(page)*blockdev.PageSize, nil); err != nil {
			t.Fatal(err)
		}
		copy(model[page*blockdev.PageSize:], data)
	}
	page := make([]byte, blockdev.PageSize)
	for i := 0; i < 300; i++ {
		switch i % 4 {
		case 0: // compressible
			for j := range page {
				page[j] = byte(r.IntN(8))
			}
		case 1: // random: stored raw
			for j := range page {
				page[j] = byte(r.Uint32())
			}
		case 2: // same-filled, non-zero
			for j := range page {
				page[j] = byte(0x5a + j%8)
			}
		case 3: // text
			copy(page, bytes.Repeat([]byte("swap me out "), blockdev.PageSize/12+1))
			page[r.IntN(len(page))] = byte(i)
		}
		if i == 150 {
			if err := d.SetAlgorithm("zstd", zcomp.Params{Level: 3}, "level=3"); err != nil {
				t.Fatal(err)
			}
		}
		write(r.IntN(testSize/blockdev.PageSize), page)
	}
	// A sub-page write (read-modify-write) and a hole punched by TRIM.
	if err := d.WriteAt([]byte("tail"), testSize-4, nil); err != nil {
		t.Fatal(err)
	}
	copy(model[testSize-4:], "tail")
	if err := d.Discard(8*blockdev.PageSize, 4*blockdev.PageSize); err != nil {
		t.Fatal(err)
	}
	clear(model[8*blockdev.PageSize : 12*blockdev.PageSize])
	return model
}

func contents(t testing.TB, d *blockdev.Device) []byte {
	t.Helper()
	got := make([]byte, d.Size())
	if err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestSaveLoadRoundTrip(t *testing.T) {
	src := newDev(t, "dev", "lz4")
	model := fill(t, src)
	src.MarkIdle(0)
	var buf bytes.Buffer
	saved, err := Save(&buf, src)
	if err != nil {
		t.Fatal(err)
	}
	if saved.Bytes != int64(buf.Len()) || saved.Pages != src.Stats().PagesStored {
		t.Fatalf("summary %+v, file %d bytes, device %d pages", saved, buf.Len(), src.Stats().PagesStored)
	}
	// Raw objects, not pages: the file is about as big as the store's data.
	if st := src.Stats(); int64(buf.Len()) > st.ComprDataSize+saved.Pages*40+1024 {
		t.Fatalf("state file of %d bytes for %d bytes of objects", buf.Len(), st.ComprDataSize)
	}

	// The new device's primary is deflate: lz4 and zstd pages need
	// compressors installed for them.
	dst := newDev(t, "dev", "deflate")
	loaded, err := Load(bytes.NewReader(buf.Bytes()), dst)
	if err != nil {
		t.Fatal(err)
	}
	if loaded != saved {
		t.Fatalf("loaded %+v, saved %+v", loaded, saved)
	}
	if !bytes.Equal(contents(t, dst), model) {
		t.Fatal("restored contents differ")
	}
	a, b := src.Stats(), dst.Stats()
	if a.PagesStored != b.PagesStored || a.ComprDataSize != b.ComprDataSize || a.SamePages != b.SamePages || a.HugePages != b.HugePages {
		t.Fatalf("stats differ: saved %+v, restored %+v", a, b)
	}
	if n := dst.MarkIdle(1 << 40); n != 0 {
		// Nothing is that old; MarkIdle counts pages now marked, idle ones included.
		t.Logf("%d pages kept their idle mark", n)
	}
	algos := map[string]bool{}
	for _, c := range dst.Compressors() {
		algos[c.Algorithm] = true
	}
	if !algos["lz4"] || !algos["zstd"] || !algos["deflate"] {
		t.Fatalf("compressors after load: %+v", dst.Compressors())
	}
	// Overwriting every page releases the imported compressors.
	dst.Clear()
	released := 0
	for _, c := range dst.Compressors() {
		if c.Algorithm != "deflate" {
			released++
		}
	}
	if released != 0 {
		t.Fatalf("imported compressors outlive their pages: %+v", dst.Compressors())
	}
	// Saving the restored device gives the same file.
	var again bytes.Buffer
	if _, err := Save(&again, func() *blockdev.Device {
		d := newDev(t, "dev", "lz4")
		if _, err := Load(bytes.NewReader(buf.Bytes()), d); err != nil {
			t.Fatal(err)
		}
		return d
	}()); err != nil {
		t.Fatal(err)
	}
	// The header names the device's current primary, which differs.
	skip := func(b []byte) []byte { return b[16+int(binary.BigEndian.Uint32(b[12:]))+4:] }
	if x, y := skip(again.Bytes()), skip(buf.Bytes()); !bytes.Equal(x, y) {
		for i := range min(len(x), len(y)) {
			if x[i] != y[i] {
				t.Logf("first difference at record byte %d of %d/%d", i, len(x), len(y))
				break
			}
		}
		t.Fatal("a restored device saves to a different file")
	}
}

func saved(t testing.TB) ([]byte, []byte) {
	t.Helper()
	src := newDev(t, "dev", "lz4")
	model := fill(t, src)
	var buf bytes.Buffer
	if _, err := Save(&buf, src); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), model
}

// TestCorruptionRefused: every truncation and every byte flip tried is
// reported, and the device is left empty (never half loaded).
func TestCorruptionRefused(t *testing.T) {
	file, _ := saved(t)
	d := newDev(t, "dev", "lz4")
	check := func(what string, b []byte) {
		t.Helper()
		_, err := Load(bytes.NewReader(b), d)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: got %v, want ErrCorrupt", what, err)
		}
		if n := d.Stats().PagesStored; n != 0 {
			t.Fatalf("%s: %d pages left on the device after a refused load", what, n)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	cuts := []int{0, 1, 15, 16, 40, len(file) - 1, len(file) - 4, len(file) - 25}
	for i := 0; i < 20; i++ {
		cuts = append(cuts, r.IntN(len(file)))
	}
	for _, n := range cuts {
		check("truncated", file[:n])
	}
	flips := []int{0, 8, 12, 16, 20, 30, len(file) - 1, len(file) - 10}
	for i := 0; i < 60; i++ {
		flips = append(flips, r.IntN(len(file)))
	}
	for _, at := range flips {
		b := bytes.Clone(file)
		b[at] ^= byte(1 + r.IntN(255))
		check("flipped", b)
	}
	check("trailing data", append(bytes.Clone(file), 0))
	// A whole record dropped: cut out the first page record after the header.
	hdrLen := 16 + int(binary.BigEndian.Uint32(file[12:])) + 4
	recLen := 5 + int(binary.BigEndian.Uint32(file[hdrLen+1:])) + 4
	check("record dropped", append(bytes.Clone(file[:hdrLen]), file[hdrLen+recLen:]...))
	// ... and the intact file still loads into the same device.
	if _, err := Load(bytes.NewReader(file), d); err != nil {
		t.Fatal(err)
	}
}

func TestLoadRefusesWrongDevice(t *testing.T) {
	file, _ := saved(t)
	other, err := blockdev.New(blockdev.Config{Name: "dev", Size: 2 * testSize, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := Load(bytes.NewReader(file), other); err == nil {
		t.Fatal("loaded into a device of another size")
	}
	if _, err := Load(bytes.NewReader(file), newDev(t, "other", "lz4")); err == nil {
		t.Fatal("loaded into a device of another name")
	}
	full := newDev(t, "dev", "lz4")
	full.WriteAt(make([]byte, 4096), 0, nil)
	if _, err := Load(bytes.NewReader(file), full); err == nil {
		t.Fatal("loaded into a device that holds data")
	}
}

func TestFiles(t *testing.T) {
	src := newDev(t, "dev", "lz4")
	model := fill(t, src)
	path := filepath.Join(t.TempDir(), "dev.state")
	d := newDev(t, "dev", "lz4")
	if _, found, err := LoadFile(path, d); found || err != nil {
		t.Fatalf("missing file: found %v, err %v", found, err)
	}
	if _, err := SaveFile(path, src); err != nil {
		t.Fatal(err)
	}
	if _, found, err := LoadFile(path, d); !found || err != nil {
		t.Fatalf("found %v, err %v", found, err)
	}
	if !bytes.Equal(contents(t, d), model) {
		t.Fatal("restored contents differ")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("state file still in place after loading: %v", err)
	}
	if _, err := os.Stat(path + ".loaded"); err != nil {
		t.Fatal(err)
	}
	// A corrupt file stays where it is, for the admin to look at.
	os.WriteFile(path, []byte("UZRAMSTA garbage"), 0o600)
	if _, found, err := LoadFile(path, newDev(t, "dev", "lz4")); !found || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt file: found %v, err %v", found, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}

// FuzzLoad: no input panics the loader, and a refused load leaves the
// device empty.
func FuzzLoad(f *testing.F) {
	file, _ := saved(f)
	f.Add(file)
	f.Add(file[:len(file)/2])
	f.Add([]byte(magic))
	d := newDev(f, "dev", "lz4")
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := Load(bytes.NewReader(b), d); err != nil {
			if n := d.Stats().PagesStored; n != 0 {
				t.Fatalf("%d pages left after a refused load", n)
			}
			return
		}
		d.Clear()
	})
}
