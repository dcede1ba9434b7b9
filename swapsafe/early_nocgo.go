//go:build linux && !cgo

package swapsafe

// earlyIOFlusher: without cgo there is no constructor; AllThreadsSyscall
// does the work.
func earlyIOFlusher() (tried bool, err error) { return false, nil }

// cgoBuild: AllThreadsSyscall works without cgo.
const cgoBuild = false
