// Package streams decides which compression context (zcomp.Context) a request
// gets: per-CPU streams with a mutex and retry-on-offline (zram 6.15), or one
// lock-guarded pool of streams (the 2025 zram patch), switchable per pool.
// Pools are grouped by priority in a Set (0 primary, 1..3 recompression) and
// kept alive by a sharded reference count (zswap's percpu_ref).
package streams
