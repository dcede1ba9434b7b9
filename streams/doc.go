// Package streams decides which compression context (zcomp.Context) a request
// gets. It builds both of the kernel's designs, switchable per pool:
//
//   - PerCPU (zram since Linux 6.15): one stream per CPU slot, each behind its
//     own mutex held for the whole (de)compression. Get picks the caller's
//     slot, locks it, and if the slot went offline while the caller was
//     getting there (the slot set shrank, and the caller may have moved), it
//     unlocks and retries on the slot it is on now.
//   - Pooled (the 2025 zram patch): one idle list under one lock, streams
//     created on demand up to the maximum, callers waiting on a condition
//     variable when none is idle, surplus streams freed on Put when the
//     maximum shrinks.
//
// A device holds one pool per priority (0 the primary algorithm,
// 1..MaxPriority the recompression algorithms; blockdev's compressor table),
// each kept alive by a sharded reference count in the manner of zswap's
// percpu_ref.
//
// # Usage
//
//	p.TryRef()                      // the request pins the current pool
//	s, err := p.Get()
//	n, err := s.Ctx.Compress(s.Buf, page)
//	p.Ref()                         // the stored page pins its pool...
//	p.Put(s)
//	p.Unref()                       // ...the request's ref goes
//	// later, reading or freeing the page: p.Get/p.Put on the page's pool,
//	// then p.Unref() when the page is freed or rewritten.
//
// The hot path (Get, Put, TryRef, Ref, Unref, and the zcomp work on the
// stream's buffers) allocates nothing; TestHotPathAllocs checks it with
// testing.AllocsPerRun in both modes, with and without the references.
//
// # CPU slot: the runtime's P, not the OS CPU
//
// A slot is chosen by the id of the P the goroutine runs on, read with
// runtime.procPin/procUnpin (pulled with go:linkname as sync.Pool's shards
// do; the runtime marks both push-linknamed for go.dev/issue/67401, so they
// link under Go 1.26's -checklinkname rules). Measured on the development
// machine (BenchmarkCPUSlot; first figure with the machine at load ~5, range
// over runs at load 8-15): procPin+procUnpin 6 ns (6-15), runtime.GOMAXPROCS(0)
// 11 ns (11-60), getcpu(2) through unix.RawSyscall 235 ns (235-880) and
// through unix.Syscall 310 ns (270-1360). x/sys/unix has no Getcpu wrapper and
// Go cannot call the vDSO's getcpu, so the OS CPU costs a real syscall: 40
// times procPin, and several times the rest of Get and Put together. The P id is also the right
// notion of "CPU" for Go: only GOMAXPROCS goroutines run at once, one per P,
// so one stream per P gives each running goroutine its own stream; P ids are
// dense in [0, GOMAXPROCS) and follow GOMAXPROCS exactly, where OS CPU ids
// can be sparse under a cpuset. Like raw_cpu_ptr() in the kernel, the id is a
// hint: the goroutine may move right after reading it, which costs at most
// sharing a slot (the mutex makes that safe).
//
// Slot mapping: the online slot count is min(Max, GOMAXPROCS) (Max 0 means
// GOMAXPROCS), and P id p uses slot p mod online. With fewer slots than Ps
// (--streams below the CPU count) several Ps share a slot and its mutex
// serialises them; slots beyond GOMAXPROCS would never be picked, so they
// are not brought online.
//
// # Offline and online
//
// The online set follows SetMax (the admin's --streams N) and GOMAXPROCS,
// which the runtime changes when the cgroup CPU limit changes. GOMAXPROCS is
// polled every 1024 Gets per slot (it costs one scheduler lock), and growth
// is seen at once in PerCPU mode, when a P id beyond the table shows up.
// Resizes publish an immutable slot table; Get reads it, locks the slot,
// and rechecks the slot is still online against the newest table.
//
// Lifetime as in the newest zswap (2026, "tie per-CPU acomp_ctx lifetime to
// the pool"): a slot's stream is allocated when the pool is created (with
// Prealloc) or when the slot first appears, kept while the slot is offline,
// and freed only when the pool is destroyed. So going offline frees nothing
// and a holder is never freed under; retry-on-offline only keeps callers on
// the online set. A caller never spins forever: after 4 retries Get blocks on
// slot 0, which is always online (TestRetryOnOfflineBounded stages the race).
//
// # Pool lifetime and refcount
//
// A pool is referenced by everything that needs it: the device that
// installed it (the creator's reference), in-flight requests (TryRef to
// Unref), and stored pages it compressed (Ref/Unref). Switching the primary
// algorithm installs a new pool and kills the old one; the old pool
// keeps decompressing its pages until the last is freed, then is destroyed
// and OnRelease runs (TestAlgorithmSwitchUnderLoad).
//
// The count is a percpu_ref: one counter per P shard, each on its own
// 128-byte line, so Ref/Unref are one XADD on a line the P owns. Shards may
// go negative (Ref on one P, Unref on another). Kill swaps a dead marker into
// every shard, adds what they held to a central atomic that carried a large
// bias meanwhile (so no transient sum can reach zero), then subtracts the
// bias and the creator's reference in one step; from then on every Ref/Unref
// sees the dead marker in its XADD result and goes to the central atomic,
// whose zero is exact. Release runs once, in the goroutine that dropped the
// last reference, taking only the pool's internal resize lock (never held by
// callers) and calling OnRelease with no lock held. A stream still held at
// destruction (a Get without a reference) is closed by its Put instead.
// BenchmarkRef, 2 goroutines on 2 Ps, Ref+Unref: sharded 7 ns against 21-23
// ns for one shared atomic at load ~5; at load 8-15 the shared atomic won
// (11-18 against 29-42 ns), because with the vCPUs mostly preempted the two
// goroutines rarely run at the same instant, so the line rarely bounces, while
// procPin's cost rose. Sharding is for many-core machines (the kernel's case:
// 128 CPUs); on 2 vCPUs it is a wash.
//
// # Choice of mode
//
// DefaultMode is PerCPU. The strategies' own cost is tens of nanoseconds
// against 15-200 microseconds of compression, so with a codec the modes
// measure within noise of each other; Get+Put alone, PerCPU wins from two
// callers up, and it never bounces one lock line between cores, keeps each
// stream warm in one core's cache and allocates nothing after creation. The
// block device runs many concurrent requests. Pooled remains the choice for
// secondary (recompression) pools when memory matters more: it allocates
// only the streams actually used at once. The figures and the command that
// reproduces them: docs/benchmarks.md.
package streams
