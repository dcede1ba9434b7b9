// Package recompress is zram's recompression for uzram devices: the
// request syntax (Parse, ParseAlgorithm), an automatic policy that marks
// pages idle by age and recompresses them in the background within a CPU
// budget (StartPolicy, ParsePolicy), and a terminal progress bar (Bar). The
// mechanism itself is blockdev.Device.Recompress.
//
// # zram's semantics, as followed
//
// Read from drivers/block/zram/zram_drv.c (recompress_store,
// scan_slots_for_recompress, recompress_slot; Linux 6.12-6.16) and
// Documentation/admin-guide/blockdev/zram.rst:
//
//   - recomp_algorithm "algo=NAME priority=N": N is 1..3 (default 1); the
//     parameters of each algorithm (level=, dict=) are its own.
//   - recompress "type=idle|huge|huge_idle threshold=B max_pages=N
//     algo=NAME priority=N". Without type= every stored page is a candidate.
//     Same-filled pages, pages flagged incompressible and pages already
//     compressed at the highest priority the run may use are never picked.
//     Candidates are taken largest first (zram sorts into 64-byte buckets;
//     we sort exactly).
//   - threshold: a page whose compressed size is below it is skipped (and
//     does not count against max_pages); a result is kept only if it is
//     below it too. threshold must be below the huge class (3632): zram
//     returns EINVAL otherwise.
//   - max_pages counts every page tried, whether it shrank or not.
//   - priority=N tries only priority N (priority=0 means 1); algo=NAME
//     searches the configured algorithms from that priority upwards and
//     tries only the one found. Without either, each page tries the
//     priorities above its own, lowest first, until one helps.
//   - A result is kept only if it lands in a strictly smaller size class of
//     the store (zs_lookup_class_index). For a huge page (stored raw) that
//     means under the huge threshold, since everything above it is stored
//     raw in one class.
//   - When no priority helped and the run went up to the device's highest
//     priority, the page is flagged incompressible and never tried again
//     until it is rewritten. A run limited to a lower priority flags nothing.
//   - Every attempt clears the page's idle mark (zram: "we touched this
//     entry"), so a second type=idle pass needs a new idle marking.
//   - A huge page that shrinks stops being huge: huge_pages drops,
//     huge_pages_since does not.
//
// Where uzram differs, and why:
//   - zram ends the priority range at num_active_comps (a count of
//     configured algorithms), so with priorities 1 and 3 configured it
//     never reaches 3; uzram ends it at the highest configured priority.
//   - zram ignores unknown keys and an unknown type= (which then means
//     every page); uzram refuses both. max_pages=0, which makes zram do
//     nothing, is refused too: leave max_pages out for no limit.
//   - zram holds the slot lock across the whole recompression; uzram
//     decodes under the page lock, compresses without it, and commits under
//     it only if the page was not written, trimmed or freed meanwhile (the
//     new data wins). A recompression is not an access: the page's last
//     access time stays (zram resets it to 0).
//   - zram's recompression allocates past mem_limit; uzram's store refuses,
//     so at the limit a page that would need new store memory keeps its old
//     object (counted as failed) and the run goes on.
//   - A run waits for another run on the same device (zram: EAGAIN), and
//     the automatic policy's runs give way to a manual one.
package recompress
