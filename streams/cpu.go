package streams

import (
	_ "unsafe" // for go:linkname
)

// procPin and procUnpin are the runtime functions sync.Pool shards by. The
// runtime marks both as push-linknamed ("hall of shame", go.dev/issue/67401),
// so pulling them still links under Go 1.23+'s -checklinkname rules, and the
// runtime promises not to change their signatures.
//
//go:linkname procPin runtime.procPin
func procPin() int

//go:linkname procUnpin runtime.procUnpin
func procUnpin()

// currentP returns the id of the P the calling goroutine runs on, in
// [0, GOMAXPROCS). The goroutine may move to another P right after: callers
// treat the id as a hint, exactly as the kernel treats raw_cpu_ptr().
func currentP() int {
	id := procPin()
	procUnpin()
	return id
}
