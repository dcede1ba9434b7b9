package streams

import (
	"math"
	"runtime"
	"sync/atomic"
)

// refDead is what Kill swaps into a shard when folding it into the central
// counter. Later Adds land near it, far below any live shard count (which
// stays within +-refDeadCheck), so one XADD both counts on a live shard and
// tells the caller that the shard is dead and the op must go to central.
const (
	refDead      = math.MinInt64 / 2
	refDeadCheck = math.MinInt64 / 4
)

// refBias keeps the central counter far from zero while shards are being
// folded, so a transient negative shard sum cannot fake a release (the
// kernel's PERCPU_COUNT_BIAS).
const refBias = 1 << 60

// refShard is one P's share of the count, alone on its cache line (128 bytes
// covers adjacent-line prefetch on x86).
type refShard struct {
	n atomic.Int64
	_ [120]byte
}

// ref is a percpu_ref: Ref/Unref touch only the caller's P's shard until Kill;
// after Kill all counting goes through one atomic whose zero is exact.
// Shard counts may go negative (Ref on one P, Unref on another); only their
// sum with central means anything.
type ref struct {
	shards  []refShard
	mask    int
	central atomic.Int64 // refBias + the creator's reference until Kill
	killed  atomic.Bool
	release func() // called exactly once, when the count reaches zero after Kill
}

func (r *ref) init(release func()) {
	n := 1
	for n < runtime.GOMAXPROCS(0) || n < runtime.NumCPU() {
		n <<= 1
	}
	r.shards = make([]refShard, n)
	r.mask = n - 1
	r.central.Store(refBias + 1)
	r.release = release
}

// shard returns the caller's shard; a stale P id only costs sharing a line.
func (r *ref) shard() *atomic.Int64 {
	return &r.shards[currentP()&r.mask].n
}

// get adds a reference. It panics on a released ref: the caller had no
// reference to justify the new one.
func (r *ref) get() {
	if !r.tryGet() {
		panic("streams: Ref on a released pool")
	}
}

// tryGet adds a reference unless the count has already reached zero after
// Kill (percpu_ref_tryget).
func (r *ref) tryGet() bool {
	// A live shard means Kill has not folded it yet, so the creator's
	// reference still stands and the count cannot be zero.
	if r.shard().Add(1) > refDeadCheck {
		return true
	}
	for {
		v := r.central.Load()
		if v <= 0 {
			return false
		}
		if r.central.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// put drops a reference and runs release if it was the last one after Kill.
func (r *ref) put() {
	if r.shard().Add(-1) > refDeadCheck {
		return
	}
	r.putCentral(1)
}

func (r *ref) putCentral(n int64) {
	switch v := r.central.Add(-n); {
	case v == 0:
		r.release()
	case v < 0:
		panic("streams: Unref without a matching Ref")
	}
}

// kill folds every shard into central and drops the creator's reference
// (percpu_ref_kill). Calls after the first are no-ops.
func (r *ref) kill() {
	if !r.killed.CompareAndSwap(false, true) {
		return
	}
	var sum int64
	for i := range r.shards {
		sum += r.shards[i].n.Swap(refDead)
	}
	// Counts moved to central during the fold are already there; add what
	// the shards held, then remove the bias and the creator's reference in
	// one step so zero is reached exactly once.
	r.central.Add(sum)
	r.putCentral(refBias + 1)
}

// count returns the current number of references (approximate while shards
// are live and changing).
func (r *ref) count() int64 {
	c := r.central.Load()
	if c >= refBias/2 { // shards not folded yet (or being folded)
		c -= refBias
		for i := range r.shards {
			if v := r.shards[i].n.Load(); v > refDeadCheck {
				c += v
			}
		}
	}
	return c
}
