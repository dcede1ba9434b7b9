package blockdev

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/uzram/uzram/pagestore"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/swapsafe"
	"github.com/uzram/uzram/zcomp"
)

// PageSize is the device's page: the unit of compression and storage.
const PageSize = zcomp.PageSize

// SectorSize is the smallest unit a request may address.
const SectorSize = 512

// HugeThreshold is zram's huge_class_size on 4 KiB pages: a page that does
// not compress below it is stored raw, since a compressed object that large
// saves too little to pay for the decompression.
const HugeThreshold = 3632

// Errors a device operation can return; the server maps them to NBD errors.
var (
	ErrRange   = errors.New("blockdev: request outside the device")
	ErrNoSpace = errors.New("blockdev: memory limit reached")
)

// Config describes a device.
type Config struct {
	Name       string
	Size       int64 // bytes; rounded up to a whole page
	Algorithm  string
	Params     zcomp.Params
	ParamsText string // Params as the admin wrote them, for display
	StreamMode streams.Mode
	Streams    int   // 0: one per CPU
	MemLimit   int64 // bytes of store memory; 0: none
	// NoAutoCompact turns off background compaction (on by default, beyond
	// zram: it runs when reclaimable store memory passes a threshold).
	NoAutoCompact bool
	// TableOnDemand leaves the slot table's pages to be faulted in as
	// pages are first written, instead of all at creation (16 bytes per
	// 4 KiB page). Only for a server whose memory is not locked: a locked
	// swap server must not fault on its table under memory pressure.
	TableOnDemand bool
}

// Device is a compressed RAM block device.
type Device struct {
	name   string
	size   uint64
	npages uint64
	epoch  time.Time

	table *slotTable
	slots []slot
	locks pageLocks
	store *pagestore.Store
	comps compTable

	pages sync.Pool // *[PageSize]byte scratch for sub-page work

	stats  counters
	recomp recompState // recompress.go
}

// counters hold zram's mm_stat and io_stat figures that the device owns; the
// store owns mem_used_total, mem_used_max and pages_compacted.
type counters struct {
	pagesStored    atomic.Int64
	comprDataSize  atomic.Int64
	samePages      atomic.Int64
	hugePages      atomic.Int64
	hugePagesSince atomic.Int64
	failedReads    atomic.Int64
	failedWrites   atomic.Int64
	invalidIO      atomic.Int64
	notifyFree     atomic.Int64
	reads          atomic.Int64
	writes         atomic.Int64
	partialWrites  atomic.Int64 // WritePartial stopped short of store memory

	// Recompression (recompress.go): pages flagged incompressible now, and
	// pages and bytes held by each secondary priority (priority 0 is what
	// remains of the stored pages, so the write path pays nothing).
	incompressible atomic.Int64
	prioPages      [streams.MaxPriority + 1]atomic.Int64
	prioBytes      [streams.MaxPriority + 1]atomic.Int64
	recomp         recompCounters
}

// New creates a device and preallocates what its write path needs.
func New(cfg Config) (*Device, error) {
	if cfg.Size <= 0 {
		return nil, fmt.Errorf("blockdev: device size must be positive, got %d", cfg.Size)
	}
	if cfg.Algorithm == "" {
		cfg.Algorithm = zcomp.Default
	}
	if _, err := zcomp.Lookup(cfg.Algorithm); err != nil {
		return nil, fmt.Errorf("blockdev: %w", err)
	}
	var err error
	size := (uint64(cfg.Size) + PageSize - 1) / PageSize * PageSize
	d := &Device{name: cfg.Name, size: size, npages: size / PageSize, epoch: time.Now()}
	d.pages.New = func() any { return new([PageSize]byte) }
	// The Device is a large allocation of fresh, untouched memory: its
	// page-lock stripes (256 KiB) would fault one page at a time on the
	// write path.
	swapsafe.Prefault(unsafe.Slice((*byte)(unsafe.Pointer(&d.locks)), unsafe.Sizeof(d.locks)))
	if d.table, err = newSlotTable(d.npages, !cfg.TableOnDemand); err != nil {
		return nil, err
	}
	d.slots = d.table.slots
	// Reserve: the write path takes store memory faulted in ahead by a
	// refiller, never faulting itself; as swap that fault would wait on the
	// very swap-out it is serving.
	if d.store, err = pagestore.New(pagestore.Options{Limit: cfg.MemLimit, AutoCompact: !cfg.NoAutoCompact, Reserve: true}); err != nil {
		d.table.close()
		return nil, fmt.Errorf("blockdev: %w", err)
	}
	d.comps.mode, d.comps.streams = cfg.StreamMode, cfg.Streams
	if err := d.comps.install(0, cfg.Algorithm, cfg.Params, cfg.ParamsText); err != nil {
		d.store.Close()
		d.table.close()
		return nil, err
	}
	return d, nil
}

// Name is the device's export name.
func (d *Device) Name() string { return d.name }

// Size is the device's size in bytes.
func (d *Device) Size() uint64 { return d.size }

// Algorithm is the primary compression algorithm.
func (d *Device) Algorithm() string {
	if c := d.comps.current[0].Load(); c != nil {
		return c.algo
	}
	return ""
}

// Close frees all the device's memory. No I/O may be in flight.
func (d *Device) Close() error {
	// Free every page first: each holds a reference on its compressor.
	for i := range d.slots {
		d.freeLocked(uint64(i))
	}
	d.comps.close()
	err := d.store.Close()
	if terr := d.table.close(); err == nil {
		err = terr
	}
	d.slots = nil
	return err
}

func (d *Device) now() uint32 { return uint32(time.Since(d.epoch) / time.Second) }

func (d *Device) checkRange(off uint64, n int) error {
	if off > d.size || uint64(n) > d.size-off {
		d.stats.invalidIO.Add(1)
		return fmt.Errorf("%w: offset %d length %d, device size %d", ErrRange, off, n, d.size)
	}
	return nil
}

// ReadAt fills p from the device at byte offset off.
func (d *Device) ReadAt(p []byte, off uint64) error {
	if err := d.checkRange(off, len(p)); err != nil {
		return err
	}
	d.stats.reads.Add(1)
	for len(p) > 0 {
		page, in := off/PageSize, int(off%PageSize)
		n := min(PageSize-in, len(p))
		var err error
		if n == PageSize {
			err = d.readPage(page, p[:PageSize])
		} else {
			buf := d.pages.Get().(*[PageSize]byte)
			if err = d.readPage(page, buf[:]); err == nil {
				copy(p[:n], buf[in:in+n])
			}
			d.pages.Put(buf)
		}
		if err != nil {
			d.stats.failedReads.Add(1)
			return err
		}
		p, off = p[n:], off+uint64(n)
	}
	return nil
}

// WriteAt stores p on the device at byte offset off. On failure the pages
// before the failing one are written and the rest keep their old contents.
// Whole pages are compressed into scratch if it is given (at least
// HugeThreshold bytes; see writePage): a transport thread passes its own, so
// the stream goes back before the store is asked for memory.
func (d *Device) WriteAt(p []byte, off uint64, scratch []byte) error {
	if err := d.checkRange(off, len(p)); err != nil {
		return err
	}
	d.stats.writes.Add(1)
	for len(p) > 0 {
		page, in := off/PageSize, int(off%PageSize)
		n := min(PageSize-in, len(p))
		var err error
		if n == PageSize {
			d.locks.lock(page)
			err = d.writePage(page, p[:PageSize], scratch, true)
			d.locks.unlock(page)
		} else {
			err = d.modifyPage(page, in, p[:n], scratch)
		}
		if err != nil {
			d.stats.failedWrites.Add(1)
			return err
		}
		p, off = p[n:], off+uint64(n)
	}
	return nil
}

// WritePartial is WriteAt for a transport that can complete part of a
// request and keep the rest waiting without holding a thread (ublk). While
// the system is short of memory (pagestore.Store.MemoryShort) it never waits
// for store memory: it stores the leading whole pages it can and returns
// their length, with no error, or, if not even the first page fits,
// ErrWouldWait and changes nothing. The kernel completes what was stored,
// and those pages' memory is what the store's refiller waits for in
// reclaim; the rest comes back later. With memory to spare it waits as
// WriteAt does (the refiller is only behind a burst).
func (d *Device) WritePartial(p []byte, off uint64, scratch []byte) (int, error) {
	if err := d.checkRange(off, len(p)); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		page, in := off/PageSize, int(off%PageSize)
		n := min(PageSize-in, len(p)-done)
		var err error
		if n < PageSize {
			err = d.modifyPage(page, in, p[done:done+n], scratch)
		} else {
			d.locks.lock(page)
			err = d.writePage(page, p[done:done+PageSize], scratch, false)
			if err == errWouldWait && !storeShort(d.store) {
				err = d.writePage(page, p[done:done+PageSize], scratch, true)
			}
			d.locks.unlock(page)
		}
		if err == errWouldWait {
			if done == 0 {
				return 0, ErrWouldWait
			}
			d.stats.writes.Add(1)
			d.stats.partialWrites.Add(1)
			return done, nil
		}
		if err != nil {
			d.stats.writes.Add(1)
			d.stats.failedWrites.Add(1)
			return done, err
		}
		done, off = done+n, off+uint64(n)
	}
	d.stats.writes.Add(1)
	return done, nil
}

// storeShort is pagestore.Store.MemoryShort; tests make memory short.
var storeShort = (*pagestore.Store).MemoryShort

// Discard frees the whole pages in [off, off+n) and zeroes the partial ones
// at either end (NBD TRIM, a block layer discard).
func (d *Device) Discard(off, n uint64) error { return d.discard(off, n, false) }

// WriteZeroes makes [off, off+n) read as zeros. Whole pages are freed as by
// Discard or, with noHole (NBD's NO_HOLE), become same-filled zero pages;
// neither costs store memory.
func (d *Device) WriteZeroes(off, n uint64, noHole bool) error { return d.discard(off, n, noHole) }

// Flush: every write is in memory when it is acknowledged, so there is
// nothing to do.
func (d *Device) Flush() error { return nil }

// discard is Discard and WriteZeroes: with keep, whole pages become
// same-filled zero pages instead of holes.
func (d *Device) discard(off, n uint64, keep bool) error {
	if n > uint64(^uint(0)>>1) {
		d.stats.invalidIO.Add(1)
		return fmt.Errorf("%w: discard length %d", ErrRange, n)
	}
	if err := d.checkRange(off, int(n)); err != nil {
		return err
	}
	end := off + n
	for off < end {
		page, in := off/PageSize, off%PageSize
		step := min(PageSize-in, end-off)
		if step == PageSize {
			d.locks.lock(page)
			d.freeLocked(page)
			if keep {
				d.storeLocked(page, slot{flags: slotSame, atime: d.now()}) // the zero word
			}
			d.locks.unlock(page)
			d.stats.notifyFree.Add(1)
		} else if err := d.zeroRange(page, int(in), int(step)); err != nil {
			d.stats.failedWrites.Add(1)
			return err
		}
		off += step
	}
	return nil
}

// zeroRange zeroes part of a page; an empty page stays empty.
func (d *Device) zeroRange(page uint64, in, n int) error {
	d.locks.lock(page)
	defer d.locks.unlock(page)
	if d.slots[page].empty() {
		return nil
	}
	buf := d.pages.Get().(*[PageSize]byte)
	defer d.pages.Put(buf)
	if err := d.readPageLocked(page, buf[:]); err != nil {
		return err
	}
	clear(buf[in : in+n])
	return d.writePageLocked(page, buf[:])
}

// modifyPage is a sub-page write: read, patch, rewrite, under the page lock.
// scratch is as for writePage.
func (d *Device) modifyPage(page uint64, in int, p, scratch []byte) error {
	buf := d.pages.Get().(*[PageSize]byte)
	defer d.pages.Put(buf)
	d.locks.lock(page)
	defer d.locks.unlock(page)
	if err := d.readPageLocked(page, buf[:]); err != nil {
		return err
	}
	copy(buf[in:], p)
	return d.writePage(page, buf[:], scratch, true)
}

// TryReadPage reads one whole page into dst only if its lock is free at once;
// ok false means nothing was done (see Target).
func (d *Device) TryReadPage(dst []byte, page uint64) (ok bool, err error) {
	if !d.locks.tryLock(page) {
		return false, nil
	}
	d.stats.reads.Add(1)
	err = d.readPageLocked(page, dst)
	d.locks.unlock(page)
	if err != nil {
		d.stats.failedReads.Add(1)
	}
	return true, err
}

func (d *Device) readPage(page uint64, dst []byte) error {
	d.locks.lock(page)
	defer d.locks.unlock(page)
	return d.readPageLocked(page, dst)
}

// readPageLocked decodes one page into dst (PageSize bytes) and marks it
// accessed.
func (d *Device) readPageLocked(page uint64, dst []byte) error {
	if err := d.decodeLocked(page, dst); err != nil {
		return err
	}
	if s := &d.slots[page]; !s.empty() { // a hole has nothing to mark
		s.atime = d.now()
		s.flags &^= slotIdle
	}
	return nil
}

// decodeLocked decodes one page into dst without marking it accessed:
// recompression reads pages without making them young.
func (d *Device) decodeLocked(page uint64, dst []byte) error {
	s := &d.slots[page]
	switch {
	case s.flags&slotSame != 0:
		fillWord(dst, s.handle)
	case s.handle == 0:
		clear(dst)
	case s.flags&slotHuge != 0:
		if n := d.store.Read(pagestore.Handle(s.handle), dst); n != PageSize {
			return fmt.Errorf("blockdev: read page %d: huge object is %d bytes, want %d", page, n, PageSize)
		}
	default:
		// The page's reference keeps its compressor alive.
		c := d.comps.byID[s.comp].Load()
		st, err := c.pool.Get()
		if err != nil {
			return fmt.Errorf("blockdev: read page %d: %w", page, err)
		}
		n := d.store.Read(pagestore.Handle(s.handle), st.Buf)
		m, err := st.Ctx.Decompress(dst, st.Buf[:n])
		c.pool.Put(st)
		if err != nil {
			return fmt.Errorf("blockdev: read page %d: %w", page, err)
		}
		if m != PageSize {
			return fmt.Errorf("blockdev: read page %d: decompressed %d bytes, want %d", page, m, PageSize)
		}
	}
	return nil
}

// writePageLocked stores one full page. The old contents are replaced only
// once the new ones are safely stored, so a refused write loses nothing.
func (d *Device) writePageLocked(page uint64, src []byte) error {
	return d.writePage(page, src, nil, true)
}

// errWouldWait: a write that must not wait (TryWritePage) needs store memory
// the refiller has not prepared; nothing changed.
var errWouldWait = errors.New("blockdev: write would wait for store memory")

// ErrWouldWait is WritePartial's answer when not even the first page could
// be stored without waiting for store memory while memory is short: nothing
// changed, and the caller tries again later.
var ErrWouldWait = errWouldWait

// writePage is writePageLocked. With scratch (at least HugeThreshold bytes)
// the page is compressed into it and the stream is given back before the
// store is asked for memory, so a Put waiting for the refiller holds no
// stream that reads need. Without wait it fails with errWouldWait instead of
// waiting for the refiller.
func (d *Device) writePage(page uint64, src, scratch []byte, wait bool) error {
	if word, ok := sameFilled(src); ok {
		d.freeLocked(page)
		d.storeLocked(page, slot{handle: word, flags: slotSame, atime: d.now()})
		return nil
	}
	c, err := d.comps.acquire(0)
	if err != nil {
		return fmt.Errorf("blockdev: write page %d: %w", page, err)
	}
	defer c.pool.Unref()
	st, err := c.pool.Get()
	if err != nil {
		return fmt.Errorf("blockdev: write page %d: %w", page, err)
	}
	out := st.Buf
	if scratch != nil {
		out = scratch
	}
	data, flags := src, slotHuge
	// zram stores a page raw when it compresses to huge_class_size or more:
	// only a result below HugeThreshold fits.
	n, cerr := st.Ctx.Compress(out[:HugeThreshold-1], src)
	if scratch != nil {
		c.pool.Put(st)
	} else {
		defer c.pool.Put(st)
	}
	if cerr == nil {
		data, flags = out[:n], 0
	} else if !errors.Is(cerr, zcomp.ErrNoSpace) {
		return fmt.Errorf("blockdev: write page %d: %w", page, cerr)
	}
	var h pagestore.Handle
	if wait {
		h, err = d.store.Put(data)
	} else {
		h, err = d.store.TryPut(data)
	}
	switch {
	case err == nil:
		d.freeLocked(page)
	case errors.Is(err, pagestore.ErrWouldWait):
		return errWouldWait
	case (errors.Is(err, pagestore.ErrLimit) || errors.Is(err, pagestore.ErrNoMem)) && d.overwriteLocked(page, data):
		// At mem_limit (or out of reserved memory), but the new contents fit
		// the old object's place.
		h = pagestore.Handle(d.slots[page].handle)
		d.forgetLocked(page, false)
	case errors.Is(err, pagestore.ErrLimit):
		return fmt.Errorf("%w: write page %d: %v", ErrNoSpace, page, err)
	case errors.Is(err, pagestore.ErrNoMem):
		// No memory without a page fault: refuse (ENOSPC over NBD, counted in
		// failed_writes) rather than fault; the kernel keeps the page and
		// retries the swap-out later.
		return fmt.Errorf("%w: write page %d: %w", ErrNoSpace, page, err)
	default:
		return fmt.Errorf("blockdev: write page %d: %w", page, err)
	}
	if flags&slotHuge == 0 {
		c.pool.Ref() // the page needs its compressor to be read back
	}
	d.storeLocked(page, slot{handle: uint64(h), size: uint16(len(data)), flags: flags, comp: c.id, atime: d.now()})
	return nil
}

// TryWritePage stores one whole page only if that needs no waiting: its lock
// is free at once and the store has memory ready. ok false means nothing was
// done (see Target). scratch is as for WriteAt.
func (d *Device) TryWritePage(src []byte, page uint64, scratch []byte) (ok bool, err error) {
	if !d.locks.tryLock(page) {
		return false, nil
	}
	err = d.writePage(page, src, scratch, false)
	d.locks.unlock(page)
	if err == errWouldWait {
		return false, nil
	}
	d.stats.writes.Add(1)
	if err != nil {
		d.stats.failedWrites.Add(1)
	}
	return true, err
}

// overwriteLocked rewrites a page's stored object in place when the new data
// falls in the same size class, so it needs no new store memory.
func (d *Device) overwriteLocked(page uint64, data []byte) bool {
	s := &d.slots[page]
	return s.handle != 0 && s.flags&slotSame == 0 && d.store.Overwrite(pagestore.Handle(s.handle), data)
}

// storeLocked fills an empty slot with s and counts the page: the
// counterpart of forgetLocked. A compressed page's reference on its
// compressor is the caller's to have taken.
func (d *Device) storeLocked(page uint64, s slot) {
	d.slots[page] = s
	d.stats.pagesStored.Add(1)
	switch {
	case s.flags&slotSame != 0:
		d.stats.samePages.Add(1)
		return
	case s.flags&slotHuge != 0:
		d.stats.hugePages.Add(1)
		d.stats.hugePagesSince.Add(1)
	default:
		if prio := d.slotPrio(&s); prio > 0 {
			d.stats.prioPages[prio].Add(1)
			d.stats.prioBytes[prio].Add(int64(s.size))
		}
	}
	d.stats.comprDataSize.Add(int64(s.size))
}

// freeLocked empties a slot and gives its object back to the store.
func (d *Device) freeLocked(page uint64) { d.forgetLocked(page, true) }

// forgetLocked empties a slot and undoes its accounting; with freeObject it
// also frees the stored object (without, the caller has reused it).
func (d *Device) forgetLocked(page uint64, freeObject bool) {
	s := &d.slots[page]
	if s.empty() {
		*s = slot{}
		return
	}
	if s.flags&slotSame != 0 {
		d.stats.samePages.Add(-1)
	} else {
		if freeObject {
			d.store.Free(pagestore.Handle(s.handle))
		}
		d.stats.comprDataSize.Add(-int64(s.size))
		if s.flags&slotIncompressible != 0 {
			d.stats.incompressible.Add(-1)
		}
		if s.flags&slotHuge != 0 {
			d.stats.hugePages.Add(-1)
		} else {
			c := d.comps.byID[s.comp].Load()
			if c.prio > 0 {
				d.stats.prioPages[c.prio].Add(-1)
				d.stats.prioBytes[c.prio].Add(-int64(s.size))
			}
			c.pool.Unref()
		}
	}
	d.stats.pagesStored.Add(-1)
	*s = slot{}
}

// CountInvalid records a request a transport refused before it reached the
// device (zram's invalid_io).
func (d *Device) CountInvalid() { d.stats.invalidIO.Add(1) }
