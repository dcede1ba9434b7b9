// Package pagestore is uzram's compressed page store: a zsmalloc-style
// allocator for objects of 1..4096 bytes (compressed 4 KiB pages) in memory
// mapped from the OS, off the Go heap.
//
// # Why not the Go heap
//
// The store is the product: a compressed RAM disk is only worth having if
// the compressed pages cost little more than their compressed size. On the Go
// heap, 1 GiB of objects would let the heap grow to about 2 GiB before a
// collection (GOGC=100), every collection would mark each of the half a
// million objects, and Go's size classes near 2-4 KiB are 256-640 bytes apart
// (a 2100-byte page would take 2304). Here the data lives in mmap'd memory
// the GC never sees, packed in 16-byte classes, and the Go heap holds only
// small metadata. Memory goes back to the OS when we say so (madvise/munmap),
// not at the runtime's discretion.
//
// # Layout
//
// Size classes run from 32 to 4096 bytes in 16-byte steps (zsmalloc's on 4
// KiB pages); an object takes the smallest class that holds it. Each class
// stores its objects in spans: contiguous runs of 1..16 pages cut into equal
// slots, so no object is ever split. Each size picks the span length with the
// least waste per object, counting the span's tail, its Go-heap record and
// the free slots of the class's last, partly filled span (2224-byte slots
// waste 46% of a 1-page span and 5% of a 4-page one, zsmalloc's classic
// maximum; 6 pages hold 11 with 0.5% to spare, and 16 pages would leave 32
// KiB half empty at the end of the class). Longer spans pay for themselves
// only in a class that holds thousands of objects; real data spreads over
// 150-180 classes, each holding a few hundred at the tails of the size
// distribution (classes.go has the figures). Adjacent sizes whose spans
// come out with the same pages and slots share one class, as in zsmalloc:
// that costs no memory and leaves fewer partial spans.
//
// Spans are carved from arenas: ~8 MiB mappings holding spans of one length.
// A freed span's pages go back to the OS at once with MADV_DONTNEED and its
// slot in the arena is reused; an arena left empty is unmapped. Arenas keep
// the mapping count low (a mapping per span could reach vm.max_map_count on a
// big store) and are mapped MADV_NOHUGEPAGE so RSS tracks the spans in use.
//
// A span's bookkeeping is a Go struct with one uint32 per slot (rev): the
// handle id owning the slot, or, for a free slot, a tag and the next free
// slot. The free list therefore never touches span memory, and compaction
// can find which handle owns each object it moves. Spans of a class sit in
// nine doubly linked fullness groups (eighths of occupancy, plus full). Put
// takes a slot from the fullest partial span, so sparse spans drain.
//
// # Handles
//
// A handle is an index into the handle table: a two-level array of 8-byte
// entries in mmap'd memory (512 KiB chunks, up to 2^28 handles), so there is
// no Go pointer per object and nothing for the GC to scan. A live entry holds
// the span id within the class (32 bits), the slot (12 bits) and the size
// minus one (12 bits); the class follows from the size. Freed entries form a
// free list of ids. Objects move, handles do not: compaction rewrites the
// entry. When every object is freed the table's pages are discarded too.
//
// # Locking
//
// Each class has a sync.RWMutex. Put, Free and compaction steps take it
// exclusively; Read takes it shared. Read loads the entry, derives the class
// from the size (which never changes), takes the class's read lock and loads
// the entry again, so it copies from wherever the object is after any move.
// Size takes no lock. The handle table's id allocator and each span-length
// pool have their own mutexes, taken briefly and never while waiting for
// another lock of the store (class lock -> pool lock is the only nesting).
// MemUsed, its peak and the limit are atomics: the limit is enforced with a
// compare-and-swap when a span is created. Madvise runs outside class locks.
//
// # Compaction
//
// A class can free floor((spans*slotsPerSpan - objects) / slotsPerSpan)
// spans by packing; that count is kept per class and, in bytes, store-wide.
// Compact drains classes one at a time: it picks the sparsest span and moves
// its objects, one bounded step (32 KiB of objects) per hold of the class
// lock, into the fullest other partial spans, rewriting each handle's entry.
// The drained span is freed and counted in PagesCompacted. When a class has a
// span's worth of free slots, the other partial spans have room for all of
// the sparsest span's objects, so every drain completes and compaction ends
// with less than one span of slack per class. With Options.AutoCompact, a
// background goroutine does the same whenever Free pushes the reclaimable
// memory past CompactRatio of MemUsed (and CompactMinBytes). Stats reports
// the longest any compaction step held a class lock.
//
// # Accounting
//
// MemUsed is the span memory held (zram's mem_used_total), a multiple of the
// span sizes; ObjBytes the sum of live object sizes (compr_data_size);
// MetadataBytes the bookkeeping outside MemUsed (handle table plus Go-heap
// records: about 20 bytes per object, 8 of them the handle entry and 4 the
// rev entry). On lz4-like pages (~2 KiB) MemUsed is about 1% above ObjBytes
// for a 1 GiB store: 0.5% rounding to 16 bytes, 0.2% span tails, and one
// partially filled span per class. With Limit set, Put fails with
// ErrLimit only when it needs a new span that would pass the limit; objects
// that fit in free slots are still stored.
//
// # Reserve
//
// As swap, the store's write path must never page-fault on new memory: when
// the kernel swaps out through us, the only reclaimable memory is anonymous
// pages that must go out through this very write, so the fault waits on it
// (deadlock) or, under PR_SET_IO_FLUSHER, cannot swap and retries forever
// (livelock). Kernel zram escapes by allocating in the reclaimer's
// PF_MEMALLOC context; a user process cannot. With Options.Reserve the
// store works as a mempool: Put takes new spans only from a per-span-length
// reserve of spans whose pages a background refiller has faulted in (and so,
// under mlockall MCL_ONFAULT, locked): MADV_POPULATE_WRITE on a whole run of
// fresh arena slots in one call, or a write to each page before Linux 5.14.
// Spare span structs and span-table room per class, and the handle table's
// next 512 KiB chunk, are prepared the same way, so Put neither faults nor
// allocates on the Go heap. The refiller may block in reclaim: it is not in
// the write path, and the writes it lets through are what free memory (each
// 4 KiB page swapped out costs about 2 KiB of store).
//
// Sizes: each span length's pool starts with a high watermark of 256 KiB
// (at least 4 spans) and a low one of half that; 11 span lengths are in use,
// so about 2.75 MiB in all, faulted in by New. Under swap the kernel writes a
// few MiB/s, spread over several pools, so that covers tens of milliseconds
// of a blocked refiller. A Put that finds its pool empty doubles the pool's
// watermarks (up to 2 MiB per pool, 8 MiB for all), which is what lets a
// sustained fio stream of one compressibility run at full speed. The refiller
// runs when a Put takes a pool below its low watermark and fills it to the
// high one (hysteresis); spans that Free or compaction release go back into
// the reserve, pages and all, while it is below its high watermark, and only
// past it are they discarded, so the refiller never faults in what
// compaction has just given back. Boosts do not last: when the store
// empties (TRIM of everything) the refiller puts every pool back to its base
// watermarks, discards the reserved spans past them and lets the classes'
// span tables shrink, so an emptied store holds what a new one does; a
// boosted pool that hands out no span for 30 to 60 s goes back to base too.
//
// Accounting: reserved spans are not in MemUsed (mem_used_total counts what
// holds objects, as zsmalloc's pages) but reported as Stats.ReserveBytes.
// The limit is still exact: a span is charged when Put takes it, checked
// before anything is taken, and the refiller reserves no more spans per pool
// than the room under the limit could use (so resident memory stays within a
// pool's share of the limit too).
//
// Failure: when a pool (or span structs, or a handle chunk) is not ready, Put
// drops the class lock, wakes the refiller and polls while it makes
// progress or merely waits for a CPU (up to 100 ReserveWaits in all). If the
// refiller sits inside populate, in the kernel's reclaim, delivering nothing
// for ReserveWait (100 ms by default; a burst waits well under a
// millisecond) while the system's free memory is below four times
// vm.min_free_kbytes (sysinfo; with more free it was only descheduled
// there), the system is short of memory: Put fails with ErrNoMem,
// stores nothing, and the block device answers ENOSPC, counted in
// failed_writes. The kernel keeps the page and retries its swap-out later,
// which beats a server that faults and hangs.
package pagestore
