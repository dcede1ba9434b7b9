// Package state saves a device's contents to a file and restores them, so a
// daemon restart or upgrade does not wipe the swap it serves (zram cannot).
//
// Pages travel as the store holds them: compressed objects are written as
// they are, with the algorithm and parameters that read them back, never
// decompressed and recompressed. A state file is:
//
//	header   magic "UZRAMSTA", version u32, body length u32, body, crc32c u32
//	         body: device size u64, page size u32, name, primary algorithm,
//	         primary parameters (strings: u16 length + bytes)
//	records  kind u8, body length u32, body, crc32c u32 (over kind, length, body)
//	         'A' algorithm: id u16, name, parameters
//	         'P' page: index u64, kind u8, flags u8, algorithm id u16, data
//	         'E' end: pages u64, records u64, crc32c u32 of every record before it
//	then nothing.
//
// All integers are big-endian. Every record carries its own checksum and the
// end record counts and checksums them all, so a flipped bit, a lost or
// repeated record and a truncated file are each detected. Load refuses a bad
// file and leaves the device empty: a swap device must come back with its
// exact contents or with none, never with garbage.
package state

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/pagestore"
)

const (
	magic   = "UZRAMSTA"
	version = 1

	recAlgo = 'A'
	recPage = 'P'
	recEnd  = 'E'

	// maxBody bounds a record or header body: a page record is at most a
	// 4 KiB page plus 14 bytes, an algorithm record two short strings. A
	// corrupted length is refused before anything is allocated for it.
	maxBody = 64 << 10

	flagIdle           = 1 << 0
	flagIncompressible = 1 << 1

	noAlgo = 0xffff
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by every error about a state file's contents (as
// opposed to errors reading it or storing its pages).
var ErrCorrupt = errors.New("state: corrupt state file")

// Summary describes what was saved or loaded.
type Summary struct {
	Pages int64 // pages stored (same-filled, raw and compressed)
	Bytes int64 // bytes of the state file
}

// Save writes d's contents to w. The device should be quiet (no
// connections): pages changed while Save runs may be saved either way.
func Save(w io.Writer, d *blockdev.Device) (Summary, error) {
	cw := &countingWriter{w: bufio.NewWriterSize(w, 1<<20)}
	var sum Summary
	body := binary.BigEndian.AppendUint64(nil, d.Size())
	body = binary.BigEndian.AppendUint32(body, blockdev.PageSize)
	body = appendString(body, d.Name())
	primary, params := d.Algorithm(), ""
	for _, c := range d.Compressors() {
		if c.Current && c.Priority == 0 {
			primary, params = c.Algorithm, c.Params
		}
	}
	body = appendString(body, primary)
	body = appendString(body, params)
	hdr := append([]byte(magic), 0, 0, 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(hdr[8:], version)
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(body)))
	hdr = append(hdr, body...)
	hdr = binary.BigEndian.AppendUint32(hdr, crc32.Checksum(hdr, castagnoli))
	if _, err := cw.Write(hdr); err != nil {
		return sum, fmt.Errorf("state: write header: %w", err)
	}

	var running uint32 // crc32c of every record so far
	var records uint64
	rec := make([]byte, 0, 5+blockdev.PageSize+32)
	put := func(kind byte, b []byte) error {
		rec = append(rec[:0], kind, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(rec[1:], uint32(len(b)))
		rec = append(rec, b...)
		rec = binary.BigEndian.AppendUint32(rec, crc32.Checksum(rec, castagnoli))
		running = crc32.Update(running, castagnoli, rec)
		records++
		_, err := cw.Write(rec)
		return err
	}
	type algoKey struct{ name, params string }
	ids := map[algoKey]uint16{}
	var pb []byte
	err := d.ExportPages(func(p blockdev.ExportedPage) error {
		id := uint16(noAlgo)
		if p.Kind == blockdev.PageCompressed {
			k := algoKey{p.Algorithm, p.Params}
			var ok bool
			if id, ok = ids[k]; !ok {
				if len(ids) >= noAlgo {
					return errors.New("too many algorithms")
				}
				id = uint16(len(ids))
				ids[k] = id
				ab := binary.BigEndian.AppendUint16(nil, id)
				ab = appendString(ab, p.Algorithm)
				ab = appendString(ab, p.Params)
				if err := put(recAlgo, ab); err != nil {
					return err
				}
			}
		}
		var flags byte
		if p.Idle {
			flags |= flagIdle
		}
		if p.Incompressible {
			flags |= flagIncompressible
		}
		pb = binary.BigEndian.AppendUint64(pb[:0], p.Index)
		pb = append(pb, byte(p.Kind), flags)
		pb = binary.BigEndian.AppendUint16(pb, id)
		pb = append(pb, p.Data...)
		sum.Pages++
		return put(recPage, pb)
	})
	if err != nil {
		return sum, fmt.Errorf("state: save %s: %w", d.Name(), err)
	}
	eb := binary.BigEndian.AppendUint64(nil, uint64(sum.Pages))
	eb = binary.BigEndian.AppendUint64(eb, records)
	eb = binary.BigEndian.AppendUint32(eb, running)
	if err := put(recEnd, eb); err != nil {
		return sum, fmt.Errorf("state: write end record: %w", err)
	}
	if err := cw.w.(*bufio.Writer).Flush(); err != nil {
		return sum, fmt.Errorf("state: save %s: %w", d.Name(), err)
	}
	sum.Bytes = cw.n
	return sum, nil
}

// Load restores a state written by Save into d, which must be empty and of
// the same size and name. On any error d is left empty again, and the error
// says what is wrong and where (wrapping ErrCorrupt when the file is bad).
func Load(r io.Reader, d *blockdev.Device) (Summary, error) {
	var sum Summary
	if st := d.Stats(); st.PagesStored != 0 {
		return sum, fmt.Errorf("state: load into %s: the device already holds %d pages", d.Name(), st.PagesStored)
	}
	cr := &countingReader{r: bufio.NewReaderSize(r, 1<<20)}
	sum, err := load(cr, d)
	sum.Bytes = cr.n
	if err != nil {
		d.Clear()
		return Summary{Bytes: cr.n}, err
	}
	return sum, nil
}

// loader is one load in progress: the device it fills and what the records
// read so far have defined.
type loader struct {
	cr      *countingReader
	d       *blockdev.Device
	sum     Summary
	algos   map[uint16]algoDef
	seen    []uint64 // pages already loaded, a bit each
	records uint64   // records read before the current one
	running uint32   // crc32c of those records
}

type algoDef struct{ name, params string }

func (l *loader) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrCorrupt, l.cr.n, fmt.Sprintf(format, args...))
}

func load(cr *countingReader, d *blockdev.Device) (Summary, error) {
	l := &loader{cr: cr, d: d, algos: map[uint16]algoDef{}}
	if err := l.header(); err != nil {
		return l.sum, err
	}
	l.seen = make([]uint64, (d.Size()/blockdev.PageSize+63)/64)
	rec := make([]byte, 5, 5+maxBody+4)
	for {
		var err error
		if rec, err = l.record(rec); err != nil {
			return l.sum, err
		}
		kind, b := rec[0], rec[5:len(rec)-4]
		switch kind {
		case recAlgo:
			err = l.algo(b)
		case recPage:
			err = l.page(b)
		case recEnd:
			return l.sum, l.end(b)
		default:
			err = l.corrupt("record %d: unknown kind %#x", l.records, kind)
		}
		if err != nil {
			return l.sum, err
		}
		l.running = crc32.Update(l.running, castagnoli, rec)
		l.records++
	}
}

// header reads and checks the file's header against the device.
func (l *loader) header() error {
	var fixed [16]byte
	if err := readFull(l.cr, fixed[:]); err != nil {
		return l.corrupt("header: %v", err)
	}
	if string(fixed[:8]) != magic {
		return l.corrupt("not a uzram state file (magic %q)", fixed[:8])
	}
	if v := binary.BigEndian.Uint32(fixed[8:]); v != version {
		return l.corrupt("version %d, this uzram reads version %d", v, version)
	}
	n := binary.BigEndian.Uint32(fixed[12:])
	if n > maxBody {
		return l.corrupt("header body of %d bytes", n)
	}
	body := make([]byte, n+4)
	if err := readFull(l.cr, body); err != nil {
		return l.corrupt("header: %v", err)
	}
	crc := crc32.Update(crc32.Checksum(fixed[:], castagnoli), castagnoli, body[:n])
	if crc != binary.BigEndian.Uint32(body[n:]) {
		return l.corrupt("header checksum mismatch")
	}
	hb := body[:n]
	size, ok1 := takeUint64(&hb)
	pageSize, ok2 := takeUint32(&hb)
	name, ok3 := takeString(&hb)
	algo, ok4 := takeString(&hb)
	_, ok5 := takeString(&hb)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return l.corrupt("header body too short")
	}
	if pageSize != blockdev.PageSize {
		return l.corrupt("page size %d, want %d", pageSize, blockdev.PageSize)
	}
	if size != l.d.Size() {
		return fmt.Errorf("state: the file is for a device of %d bytes, %s has %d", size, l.d.Name(), l.d.Size())
	}
	if name != l.d.Name() {
		return fmt.Errorf("state: the file is for device %q (%s), not %q", name, algo, l.d.Name())
	}
	return nil
}

// record reads the next record into rec's storage and checks its checksum;
// it returns the whole record: kind, length, body, checksum.
func (l *loader) record(rec []byte) ([]byte, error) {
	start := l.cr.n
	if err := readFull(l.cr, rec[:5]); err != nil {
		return rec, l.corrupt("record %d: %v (no end record: the file is truncated)", l.records, err)
	}
	n := binary.BigEndian.Uint32(rec[1:5])
	if n > maxBody {
		return rec, l.corrupt("record %d: body of %d bytes", l.records, n)
	}
	rec = rec[:5+n+4]
	if err := readFull(l.cr, rec[5:]); err != nil {
		return rec, l.corrupt("record %d: %v (the file is truncated)", l.records, err)
	}
	if crc32.Checksum(rec[:5+n], castagnoli) != binary.BigEndian.Uint32(rec[5+n:]) {
		return rec, fmt.Errorf("%w: record %d at byte %d: checksum mismatch", ErrCorrupt, l.records, start)
	}
	return rec, nil
}

// algo reads an algorithm record: an id the page records after it use.
func (l *loader) algo(b []byte) error {
	id, ok1 := takeUint16(&b)
	name, ok2 := takeString(&b)
	params, ok3 := takeString(&b)
	if !ok1 || !ok2 || !ok3 || len(b) != 0 {
		return l.corrupt("record %d: malformed algorithm record", l.records)
	}
	if _, dup := l.algos[id]; dup {
		return l.corrupt("record %d: algorithm %d defined twice", l.records, id)
	}
	l.algos[id] = algoDef{name, params}
	return nil
}

// page reads a page record and stores the page in the device.
func (l *loader) page(b []byte) error {
	idx, ok1 := takeUint64(&b)
	if !ok1 || len(b) < 4 {
		return l.corrupt("record %d: malformed page record", l.records)
	}
	p := blockdev.ExportedPage{
		Index: idx, Kind: blockdev.PageKind(b[0]),
		Idle: b[1]&flagIdle != 0, Incompressible: b[1]&flagIncompressible != 0,
		Data: b[4:],
	}
	if idx >= uint64(len(l.seen))*64 || idx*blockdev.PageSize >= l.d.Size() {
		return l.corrupt("record %d: page %d is past the device's end", l.records, idx)
	}
	if l.seen[idx/64]&(1<<(idx%64)) != 0 {
		return l.corrupt("record %d: page %d saved twice", l.records, idx)
	}
	l.seen[idx/64] |= 1 << (idx % 64)
	if id := binary.BigEndian.Uint16(b[2:]); p.Kind == blockdev.PageCompressed {
		a, ok := l.algos[id]
		if !ok {
			return l.corrupt("record %d: page %d uses undefined algorithm %d", l.records, idx, id)
		}
		p.Algorithm, p.Params = a.name, a.params
	}
	if err := l.d.ImportPage(p); err != nil {
		if errors.Is(err, blockdev.ErrNoSpace) || errors.Is(err, pagestore.ErrNoMem) {
			// Out of room or memory is not the file's fault.
			return fmt.Errorf("state: record %d: %w", l.records, err)
		}
		return l.corrupt("record %d: %v", l.records, err)
	}
	l.sum.Pages++
	return nil
}

// end checks the end record against what was read, and that nothing follows.
func (l *loader) end(b []byte) error {
	pages, ok1 := takeUint64(&b)
	nrec, ok2 := takeUint64(&b)
	crc, ok3 := takeUint32(&b)
	if !ok1 || !ok2 || !ok3 || len(b) != 0 {
		return l.corrupt("malformed end record")
	}
	if pages != uint64(l.sum.Pages) || nrec != l.records || crc != l.running {
		return l.corrupt("end record says %d pages in %d records, read %d in %d (or their checksum differs)",
			pages, nrec, l.sum.Pages, l.records)
	}
	var extra [1]byte
	if m, _ := io.ReadFull(l.cr, extra[:]); m != 0 {
		return l.corrupt("data after the end record")
	}
	return nil
}

// SaveFile writes d's state to path atomically: a temporary file beside it,
// synced, then renamed over it, so a crash mid-save keeps the old file.
func SaveFile(path string, d *blockdev.Device) (Summary, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return Summary{}, fmt.Errorf("state: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	sum, err := Save(tmp, d)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return sum, fmt.Errorf("state: save %s to %s: %w", d.Name(), path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return sum, fmt.Errorf("state: %w", err)
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync() // make the rename durable; best effort
		dir.Close()
	}
	return sum, nil
}

// LoadFile restores d from path. A missing file is not an error (found is
// false: nothing to restore). After a successful load the file is renamed
// to path+".loaded": contents restored once must never come back after a
// later crash that saved nothing newer, since stale swap pages are worse
// than none.
func LoadFile(path string, d *blockdev.Device) (sum Summary, found bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return Summary{}, false, nil
	}
	if err != nil {
		return Summary{}, false, fmt.Errorf("state: %w", err)
	}
	defer f.Close()
	sum, err = Load(f, d)
	if err != nil {
		return sum, true, fmt.Errorf("state: %s: %w", path, err)
	}
	if err := os.Rename(path, LoadedPath(path)); err != nil {
		d.Clear()
		return Summary{}, true, fmt.Errorf("state: retire %s after loading it: %w", path, err)
	}
	return sum, true, nil
}

// LoadedPath is where LoadFile moves a state file it has restored.
func LoadedPath(path string) string { return path + ".loaded" }

func appendString(b []byte, s string) []byte {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// take reads an n-byte big-endian integer off the front of *b.
func take[T uint16 | uint32 | uint64](b *[]byte, n int, get func([]byte) T) (T, bool) {
	if len(*b) < n {
		return 0, false
	}
	v := get(*b)
	*b = (*b)[n:]
	return v, true
}

func takeUint16(b *[]byte) (uint16, bool) { return take(b, 2, binary.BigEndian.Uint16) }
func takeUint32(b *[]byte) (uint32, bool) { return take(b, 4, binary.BigEndian.Uint32) }
func takeUint64(b *[]byte) (uint64, bool) { return take(b, 8, binary.BigEndian.Uint64) }

func takeString(b *[]byte) (string, bool) {
	n, ok := takeUint16(b)
	if !ok || int(n) > len(*b) {
		return "", false
	}
	s := string((*b)[:n])
	*b = (*b)[n:]
	return s, true
}

func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	return err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
