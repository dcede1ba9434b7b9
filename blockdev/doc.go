// Package blockdev is uzram's block device: the compressed RAM disk itself,
// which its transports (blockdev/nbd, blockdev/ublk) serve through the
// Target interface (target.go).
//
// The device keeps one 16-byte slot per 4 KiB page (slot.go); a page is
// either empty, same-filled (every 8-byte word equal: the word is kept in the
// slot and costs no store memory), compressed by a zcomp stream and kept in
// the page store (pagestore), or huge (it did not compress below
// HugeThreshold, so it is stored raw). Requests arrive at 512-byte
// granularity; a sub-page write reads, modifies and rewrites its page under
// that page's lock. Page locks are striped over a fixed lock table, so
// requests on different pages almost never meet, and requests on the same
// page are always serialised.
//
// Files: device.go (page reads and writes), slot.go (the table and page
// locks), comp.go (the compressors pages point at), fill.go (same-filled
// pages), recompress.go (zram's recompress), export.go (raw page export and
// import for takeover and the state file), knobs.go and stats.go (zram's
// sysfs knobs and stat files).
package blockdev
