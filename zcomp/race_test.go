//go:build race

package zcomp

// raceEnabled: the race detector makes sync.Pool drop items on purpose, so
// paths that borrow from a pool (zstd's decoder tables) allocate under it.
const raceEnabled = true
