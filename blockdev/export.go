package blockdev

// Raw page export and import, for saving a device's contents across a
// restart (package state): pages travel as the objects the store holds,
// never decompressed and recompressed, each with what it takes to read it
// back (the algorithm and parameters that compressed it).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/uzram/uzram/pagestore"
	"github.com/uzram/uzram/zcomp"
)

// PageKind says how a stored page is kept.
type PageKind uint8

// ImportPage retries a Put that found no pre-faulted store memory this many
// times, importNoMemPause apart (each Put itself waits ReserveWait first):
// over half a minute, then the restore fails as out of memory.
const (
	importNoMemRetries = 300
	importNoMemPause   = 10 * time.Millisecond
)

const (
	// PageSame is a same-filled page: Data is the 8-byte fill word,
	// little-endian (as the page's bytes read it).
	PageSame PageKind = 1
	// PageRaw is a page stored uncompressed (huge): Data is its 4 KiB.
	PageRaw PageKind = 2
	// PageCompressed is a compressed object: Data as the store holds it,
	// Algorithm and Params what compressed it.
	PageCompressed PageKind = 3
)

// ExportedPage is one stored page as ExportPages hands it out and
// ImportPage takes it back.
type ExportedPage struct {
	Index uint64 // page number (byte offset / PageSize)
	Kind  PageKind
	Idle  bool // marked idle (recompression candidates)
	// Incompressible: recompression gave up on it. ImportPage does not
	// restore the mark (recompression then simply tries the page again).
	Incompressible    bool
	Algorithm, Params string
	Data              []byte
}

// ExportPages calls fn for every stored page, in page order. Each slot is
// read under its page lock, so every page is whole, though a device in use
// may change between pages. p.Data is valid only during the call; fn runs
// without any lock held. The first error from fn ends the walk.
func (d *Device) ExportPages(fn func(p ExportedPage) error) error {
	buf := make([]byte, PageSize)
	for i := range d.slots {
		page := uint64(i)
		d.locks.lock(page)
		s := d.slots[i]
		p := ExportedPage{Index: page, Idle: s.flags&slotIdle != 0, Incompressible: s.flags&slotIncompressible != 0}
		switch {
		case s.flags&slotSame != 0:
			p.Kind = PageSame
			binary.LittleEndian.PutUint64(buf, s.handle)
			p.Data = buf[:8]
		case s.handle == 0:
			d.locks.unlock(page)
			continue
		case s.flags&slotHuge != 0:
			p.Kind = PageRaw
			p.Data = buf[:d.store.Read(pagestore.Handle(s.handle), buf)]
		default:
			p.Kind = PageCompressed
			c := d.comps.byID[s.comp].Load() // pinned by the page's reference
			p.Algorithm, p.Params = c.algo, c.params
			p.Data = buf[:d.store.Read(pagestore.Handle(s.handle), buf)]
		}
		d.locks.unlock(page)
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

// ImportPage stores p as page p.Index, replacing what was there. A
// compressed object is decompressed once to check that it yields exactly one
// page with a compressor of its algorithm and parameters (installed for the
// purpose when the device has none, and released with its last page), so a
// damaged or mismatched object is refused rather than stored.
func (d *Device) ImportPage(p ExportedPage) error {
	if p.Index >= d.npages {
		return fmt.Errorf("%w: import page %d, device has %d", ErrRange, p.Index, d.npages)
	}
	var c *compressor
	switch p.Kind {
	case PageSame:
		if len(p.Data) != 8 {
			return fmt.Errorf("blockdev: import page %d: fill word of %d bytes", p.Index, len(p.Data))
		}
	case PageRaw:
		if len(p.Data) != PageSize {
			return fmt.Errorf("blockdev: import page %d: raw page of %d bytes", p.Index, len(p.Data))
		}
	case PageCompressed:
		if len(p.Data) < 1 || len(p.Data) > pagestore.MaxObjectSize {
			return fmt.Errorf("blockdev: import page %d: compressed object of %d bytes", p.Index, len(p.Data))
		}
		var err error
		if c, err = d.comps.forImport(p.Algorithm, p.Params); err != nil {
			return fmt.Errorf("blockdev: import page %d: %w", p.Index, err)
		}
		if err := checkObject(c, p.Data); err != nil {
			c.pool.Unref()
			return fmt.Errorf("blockdev: import page %d: %w", p.Index, err)
		}
	default:
		return fmt.Errorf("blockdev: import page %d: unknown kind %d", p.Index, p.Kind)
	}
	var flags uint8
	if p.Idle {
		flags |= slotIdle
	}
	if p.Kind == PageSame {
		d.locks.lock(p.Index)
		d.freeLocked(p.Index)
		d.storeLocked(p.Index, slot{handle: binary.LittleEndian.Uint64(p.Data), flags: slotSame | flags, atime: d.now()})
		d.locks.unlock(p.Index)
		return nil
	}
	h, err := d.store.Put(p.Data)
	for try := 0; errors.Is(err, pagestore.ErrNoMem) && try < importNoMemRetries; try++ {
		// A restore is not the swap write path, which must answer at once:
		// while memory is short at start-up the refiller may sit in reclaim
		// for longer than a Put waits, and the restore can wait it out.
		time.Sleep(importNoMemPause)
		h, err = d.store.Put(p.Data)
	}
	if err != nil {
		if c != nil {
			c.pool.Unref()
		}
		if errors.Is(err, pagestore.ErrLimit) {
			return fmt.Errorf("%w: import page %d: %v", ErrNoSpace, p.Index, err)
		}
		return fmt.Errorf("blockdev: import page %d: %w", p.Index, err)
	}
	s := slot{handle: uint64(h), size: uint16(len(p.Data)), flags: flags, atime: d.now()}
	if c != nil {
		s.comp = c.id // the reference forImport took is the page's
	} else {
		s.flags |= slotHuge
	}
	d.locks.lock(p.Index)
	d.freeLocked(p.Index)
	d.storeLocked(p.Index, s)
	d.locks.unlock(p.Index)
	return nil
}

// checkObject decompresses obj and fails unless it is exactly one page.
func checkObject(c *compressor, obj []byte) error {
	st, err := c.pool.Get()
	if err != nil {
		return err
	}
	defer c.pool.Put(st)
	var page [PageSize]byte
	n, err := st.Ctx.Decompress(page[:], obj)
	if err != nil {
		return fmt.Errorf("%s object does not decompress: %w", c.algo, err)
	}
	if n != PageSize {
		return fmt.Errorf("%s object decompresses to %d bytes, want %d", c.algo, n, PageSize)
	}
	return nil
}

// Clear frees every page (a failed import's cleanup), without counting the
// frees as discards.
func (d *Device) Clear() {
	for i := range d.slots {
		page := uint64(i)
		d.locks.lock(page)
		d.freeLocked(page)
		d.locks.unlock(page)
	}
}

// forImport returns a compressor for algo with params text, holding one
// reference for the page about to use it: a live priority-0 one with the
// same algorithm and parameters, or a new one that is no priority's current
// compressor and lives only as long as its pages. Secondary priorities are
// never shared, since their pages are counted per priority.
func (t *compTable) forImport(algo, params string) (*compressor, error) {
	for i := range t.byID {
		if c := t.byID[i].Load(); c != nil && c.prio == 0 && c.algo == algo && c.params == params && c.pool.TryRef() {
			return c, nil
		}
	}
	p, err := zcomp.ParseParams(params)
	if err != nil {
		return nil, fmt.Errorf("%s parameters %q: %w", algo, params, err)
	}
	c, err := t.create(0, algo, p, params, false)
	if err != nil {
		return nil, fmt.Errorf("compressor for %s: %w", algo, err)
	}
	c.pool.Ref()  // the page's
	c.pool.Kill() // drop the creator's: the pool goes with its last page
	return c, nil
}
