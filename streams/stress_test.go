package streams

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/uzram/uzram/zcomp"
)

// stressTime is how long the churn tests run; -short keeps CI quick.
func stressTime() time.Duration {
	if testing.Short() {
		return 300 * time.Millisecond
	}
	return 1500 * time.Millisecond
}

// watchdog fails the test with all stacks if done is not closed in time: the
// "never spins forever" and "never deadlocks" check.
func watchdog(t *testing.T, done <-chan struct{}, d time.Duration) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("goroutines stuck after %v:\n%s", d, buf)
	}
}

// churn changes the slot set until stop: SetMax cycling (the admin's
// --streams N) and GOMAXPROCS changes (what the runtime does when the cgroup
// CPU limit changes).
func churn(p *Pool, stop *atomic.Bool, wg *sync.WaitGroup) {
	defer wg.Done()
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; !stop.Load(); i++ {
		switch i % 3 {
		case 0:
			p.SetMax(r.IntN(6)) // 0 = follow GOMAXPROCS
		case 1:
			runtime.GOMAXPROCS(1 + r.IntN(4))
		case 2:
			p.SetMax(1) // the harshest offline: everything but slot 0
		}
		time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
	}
}

func TestStressOfflineOnline(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, m := range modes {
		t.Run(m.String(), func(t *testing.T) {
			b := &countingBackend{Backend: lz4(t)}
			p, err := NewPool(PoolConfig{Backend: b, Mode: m, Prealloc: true})
			if err != nil {
				t.Fatal(err)
			}
			var holders sync.Map // *Stream -> worker id: an independent double-hold check
			var stop atomic.Bool
			var ops atomic.Int64
			var wg, churnWG sync.WaitGroup
			const workers = 64
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					src, out := make([]byte, zcomp.PageSize), make([]byte, zcomp.PageSize)
					for i := uint64(0); !stop.Load(); i++ {
						s, err := p.Get()
						if err != nil {
							t.Error(err)
							return
						}
						if prev, loaded := holders.LoadOrStore(s, w); loaded {
							t.Errorf("stream %p held by workers %v and %d", s, prev, w)
						}
						roundTrip(t, s, uint64(w)<<32|i, src, out)
						holders.Delete(s)
						p.Put(s)
						ops.Add(1)
					}
				}()
			}
			churnWG.Add(1)
			go churn(p, &stop, &churnWG)
			time.Sleep(stressTime())
			stop.Store(true)
			done := make(chan struct{})
			go func() { wg.Wait(); churnWG.Wait(); close(done) }()
			watchdog(t, done, 30*time.Second)

			st := p.Stats()
			t.Logf("%d ops; stats %+v", ops.Load(), st)
			if st.Gets != uint64(ops.Load()) {
				t.Errorf("stats count %d gets, workers did %d", st.Gets, ops.Load())
			}
			if int64(st.Allocated) != b.live.Load() {
				t.Errorf("stats say %d streams allocated, backend has %d live contexts", st.Allocated, b.live.Load())
			}
			if m == Pooled {
				// Every stream is idle now, so shrinking frees the surplus at once.
				p.SetMax(1)
				if st := p.Stats(); st.Allocated != 1 || st.Idle != 1 {
					t.Errorf("pooled after SetMax(1): %+v", st)
				}
			}
			p.Kill()
			if b.live.Load() != 0 {
				t.Errorf("%d contexts still live after the pool was destroyed", b.live.Load())
			}
		})
	}
}

// TestRetryOnOfflineBounded stages the race of zram's zcomp_stream_get: a
// caller picks slot 3, blocks on its mutex, and the slot goes offline before
// it gets the lock, again and again. The caller must retry, then stop
// retrying and take slot 0 instead of spinning.
func TestRetryOnOfflineBounded(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	p, err := NewPool(PoolConfig{Backend: lz4(t), Mode: PerCPU, Max: 4, Prealloc: true})
	if err != nil {
		t.Fatal(err)
	}
	picked := make(chan struct{})
	proceed := make(chan struct{})
	p.testPick = func() int {
		picked <- struct{}{}
		<-proceed
		return 3
	}
	got := make(chan *Stream)
	go func() {
		s, err := p.Get()
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	for range maxRetries {
		<-picked
		p.SetMax(4)
		sl := p.table.Load().slots[3]
		sl.mu.Lock() // a holder of slot 3
		waits := p.Stats().Waits
		proceed <- struct{}{}
		for p.Stats().Waits == waits { // the caller is now blocked on slot 3
			runtime.Gosched()
		}
		p.SetMax(1) // slot 3 goes offline under the blocked caller
		sl.mu.Unlock()
	}
	var s *Stream
	select {
	case s = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("Get still spinning after the retry bound")
	}
	st := p.Stats()
	if st.Retries != maxRetries || st.Fallbacks != 1 {
		t.Errorf("retries=%d fallbacks=%d, want %d and 1", st.Retries, st.Fallbacks, maxRetries)
	}
	if s.slot.idx != 0 {
		t.Errorf("fallback got slot %d, want 0", s.slot.idx)
	}
	p.Put(s)
	// The offline slot kept its stream (zswap's lifetime rule).
	if st.Allocated != 4 {
		t.Errorf("%d streams allocated after slots went offline, want 4 kept", st.Allocated)
	}
}

// switched is how a device switches algorithms (blockdev's compressor
// table): requests pin the current pool with TryRef, a switch swaps in a new
// pool and kills the old one, which lives on while pages pin it.
type switched struct{ cur atomic.Pointer[Pool] }

func (sw *switched) install(p *Pool) {
	if old := sw.cur.Swap(p); old != nil {
		old.Kill()
	}
}

// get takes a stream of the current pool with a reference on the pool.
func (sw *switched) get() (*Stream, error) {
	for {
		p := sw.cur.Load()
		if !p.TryRef() {
			if sw.cur.Load() == p {
				return nil, ErrDestroyed
			}
			continue // replaced and released meanwhile: take the new one
		}
		s, err := p.Get()
		if err != nil {
			p.Unref()
		}
		return s, err
	}
}

// put returns a stream from get and drops get's reference.
func (sw *switched) put(s *Stream) {
	p := s.Pool()
	p.Put(s)
	p.Unref()
}

// TestAlgorithmSwitchUnderLoad switches the primary pool while workers write
// pages (each stored page pins the pool that compressed it) and read them
// back with that pool; every old pool must be destroyed exactly once, after
// its last page is gone, and never before.
func TestAlgorithmSwitchUnderLoad(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, m := range modes {
		t.Run(m.String(), func(t *testing.T) {
			var sw switched
			var made, released atomic.Int64
			type poolInfo struct {
				released atomic.Bool
			}
			newPool := func() *Pool {
				info := &poolInfo{}
				p, err := NewPool(PoolConfig{Backend: lz4(t), Mode: m, Prealloc: true, OnRelease: func() {
					if info.released.Swap(true) {
						t.Error("OnRelease called twice")
					}
					released.Add(1)
				}})
				if err != nil {
					t.Fatal(err)
				}
				made.Add(1)
				return p
			}
			sw.install(newPool())
			type stored struct {
				pool *Pool
				seed uint64
				data []byte
			}
			var stop atomic.Bool
			var wg sync.WaitGroup
			for w := range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					src, out := make([]byte, zcomp.PageSize), make([]byte, zcomp.PageSize)
					pages := make([]stored, 8)
					for i := uint64(0); !stop.Load(); i++ {
						k := i % uint64(len(pages))
						if pg := pages[k]; pg.pool != nil {
							// Read the old page back with its own pool, then free it.
							if pg.pool.Stats().Destroyed {
								t.Error("pool destroyed while a page still pins it")
							}
							s, err := pg.pool.Get()
							if err != nil {
								t.Error(err)
								return
							}
							page(pg.seed, src)
							if n, err := s.Ctx.Decompress(out, pg.data); err != nil || n != zcomp.PageSize || string(out) != string(src) {
								t.Errorf("stored page corrupt: n=%d err=%v", n, err)
							}
							pg.pool.Put(s)
							pg.pool.Unref()
						}
						s, err := sw.get()
						if err != nil {
							t.Error(err)
							return
						}
						seed := uint64(w)<<32 | i
						page(seed, src)
						n, err := s.Ctx.Compress(s.Buf, src)
						if err != nil {
							t.Error(err)
						}
						s.Pool().Ref() // the page pins its pool
						pages[k] = stored{pool: s.Pool(), seed: seed, data: append(pages[k].data[:0], s.Buf[:n]...)}
						sw.put(s)
					}
					for _, pg := range pages {
						if pg.pool != nil {
							pg.pool.Unref()
						}
					}
				}()
			}
			deadline := time.Now().Add(stressTime())
			for time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				sw.install(newPool())
				runtime.GOMAXPROCS(1 + rand.IntN(4))
			}
			stop.Store(true)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			watchdog(t, done, 30*time.Second)
			if r, n := released.Load(), made.Load(); r != n-1 {
				t.Errorf("%d of %d pools released with only the current one live, want %d", r, n, n-1)
			}
			sw.install(nil)
			if r, n := released.Load(), made.Load(); r != n {
				t.Errorf("%d of %d pools released after the last was killed", r, n)
			}
			t.Logf("%d pools switched and destroyed", made.Load())
		})
	}
}

// TestRefKill has many goroutines take and drop references while Kill
// happens: release must run exactly once, after the very last Unref.
func TestRefKill(t *testing.T) {
	for iter := range 200 {
		const workers = 16
		var finals atomic.Int32 // goroutines that reached their last Unref
		var releases atomic.Int32
		p, err := NewPool(PoolConfig{Backend: lz4(t), Mode: Pooled, OnRelease: func() {
			if n := finals.Load(); n != workers {
				t.Errorf("iter %d: released with %d of %d final Unrefs started", iter, n, workers)
			}
			releases.Add(1)
		}})
		if err != nil {
			t.Fatal(err)
		}
		var start, wg sync.WaitGroup
		start.Add(1)
		for w := range workers {
			p.Ref() // each worker's long-lived reference, taken before Kill
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				for i := range 50 + w {
					p.Ref()
					if i%7 == 0 {
						runtime.Gosched() // move Ps: Ref and Unref on different shards
					}
					p.Unref()
					if !p.TryRef() {
						t.Error("TryRef failed while this worker holds a reference")
						return
					}
					p.Unref()
				}
				finals.Add(1)
				p.Unref()
			}()
		}
		start.Done()
		if iter%2 == 0 {
			runtime.Gosched()
		}
		p.Kill()
		wg.Wait()
		if n := releases.Load(); n != 1 {
			t.Fatalf("iter %d: OnRelease called %d times", iter, n)
		}
		if p.TryRef() {
			t.Fatal("TryRef succeeded on a released pool")
		}
		if c := p.Stats().Refs; c != 0 {
			t.Fatalf("iter %d: %d references after release", iter, c)
		}
	}
}

// TestReleaseNoLocks checks OnRelease runs without pool locks held: it may
// use the pool's other methods (Stats, Get) without deadlocking.
func TestReleaseNoLocks(t *testing.T) {
	for _, m := range modes {
		done := make(chan struct{})
		var p *Pool
		p, err := NewPool(PoolConfig{Backend: lz4(t), Mode: m, Prealloc: true, OnRelease: func() {
			_ = p.Stats()
			p.SetMax(3)
			if _, err := p.Get(); err == nil {
				t.Error("Get in OnRelease succeeded")
			}
			close(done)
		}})
		if err != nil {
			t.Fatal(err)
		}
		go p.Kill()
		watchdog(t, done, 10*time.Second)
	}
}

// TestHeldAtDestroy: a caller that Gets without a reference and still holds
// the stream when the pool is destroyed keeps a working stream; its Put
// closes it.
func TestHeldAtDestroy(t *testing.T) {
	for _, m := range modes {
		b := &countingBackend{Backend: lz4(t)}
		p, err := NewPool(PoolConfig{Backend: b, Mode: m, Max: 2, Prealloc: true})
		if err != nil {
			t.Fatal(err)
		}
		s, err := p.Get()
		if err != nil {
			t.Fatal(err)
		}
		p.Kill()
		if b.live.Load() != 1 {
			t.Errorf("%v: %d live contexts with one held, want 1", m, b.live.Load())
		}
		roundTrip(t, s, 7, make([]byte, zcomp.PageSize), make([]byte, zcomp.PageSize))
		p.Put(s)
		if b.live.Load() != 0 {
			t.Errorf("%v: %d live contexts after the last Put", m, b.live.Load())
		}
	}
}

// TestHotPathAllocs proves Get/Put and the zcomp work allocate nothing, on a
// Pool alone and with the references a device's request and page take.
func TestHotPathAllocs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // AllocsPerRun runs at 1
	src, out := make([]byte, zcomp.PageSize), make([]byte, zcomp.PageSize)
	page(42, src)
	for _, m := range modes {
		for _, prealloc := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v/prealloc=%v", m, prealloc), func(t *testing.T) {
				p, err := NewPool(PoolConfig{Backend: lz4(t), Mode: m, Prealloc: prealloc})
				if err != nil {
					t.Fatal(err)
				}
				var sw switched
				p2, _ := NewPool(PoolConfig{Backend: lz4(t), Mode: m, Prealloc: prealloc})
				sw.install(p2)
				// Warm up: lazy streams are created on first use.
				s, _ := p.Get()
				p.Put(s)
				s, _ = sw.get()
				sw.put(s)
				work := func(s *Stream) {
					n, err := s.Ctx.Compress(s.Buf[:zcomp.PageSize], src)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := s.Ctx.Decompress(out, s.Buf[:n]); err != nil {
						t.Fatal(err)
					}
				}
				a := testing.AllocsPerRun(200, func() {
					s, err := p.Get()
					if err != nil {
						t.Fatal(err)
					}
					work(s)
					p.Put(s)
					s, err = sw.get()
					if err != nil {
						t.Fatal(err)
					}
					work(s)
					s.Pool().Ref()
					sw.put(s)
					p2.Unref()
				})
				if a != 0 {
					t.Errorf("%v allocs per Get+compress+decompress+Put", a)
				}
			})
		}
	}
}
