package streams

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/uzram/uzram/zcomp"
)

var modes = []Mode{PerCPU, Pooled}

func lz4(t testing.TB) zcomp.Backend {
	t.Helper()
	b, err := zcomp.Lookup("lz4")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testPages are compressible pages, made once: generating a page per
// operation would dominate the stress tests under -race.
var testPages = func() [][]byte {
	pages := make([][]byte, 64)
	for k := range pages {
		r := rand.New(rand.NewPCG(uint64(k), 0x9e3779b97f4a7c15))
		pg := make([]byte, zcomp.PageSize)
		for i := 0; i < len(pg); i += 8 {
			v := byte(r.IntN(8 + k))
			for j := range 8 {
				pg[i+j] = 'a' + v
			}
		}
		pages[k] = pg
	}
	return pages
}()

// page fills dst with the test page for seed.
func page(seed uint64, dst []byte) {
	copy(dst, testPages[(seed^seed>>32)%uint64(len(testPages))])
}

// roundTrip compresses and decompresses one page with s and checks it.
func roundTrip(t testing.TB, s *Stream, seed uint64, src, out []byte) {
	page(seed, src)
	dst := s.Buf[:zcomp.PageSize]
	n, err := s.Ctx.Compress(dst, src)
	if err != nil {
		if errors.Is(err, zcomp.ErrNoSpace) {
			return
		}
		t.Errorf("compress: %v", err)
		return
	}
	// Decompress from a copy in the second half of Buf, as the device does
	// with a stored page.
	comp := s.Buf[zcomp.PageSize : zcomp.PageSize+n]
	copy(comp, dst[:n])
	m, err := s.Ctx.Decompress(out, comp)
	if err != nil || m != zcomp.PageSize || !bytes.Equal(out, src) {
		t.Errorf("round trip: n=%d err=%v equal=%v", m, err, bytes.Equal(out, src))
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range modes {
		got, err := ParseMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseMode("percore"); err == nil {
		t.Error("ParseMode accepted percore")
	}
}

func TestSlotSize(t *testing.T) {
	if s := unsafe.Sizeof(slot{}); s != 128 {
		t.Fatalf("slot is %d bytes, want 128: fix the padding", s)
	}
	if s := unsafe.Sizeof(refShard{}); s != 128 {
		t.Fatalf("refShard is %d bytes, want 128", s)
	}
}

func TestGetPut(t *testing.T) {
	for _, m := range modes {
		t.Run(m.String(), func(t *testing.T) {
			p, err := NewPool(PoolConfig{Backend: lz4(t), Mode: m, Max: 2, Prealloc: true})
			if err != nil {
				t.Fatal(err)
			}
			src, out := make([]byte, zcomp.PageSize), make([]byte, zcomp.PageSize)
			for i := range 100 {
				s, err := p.Get()
				if err != nil {
					t.Fatal(err)
				}
				if len(s.Buf) != 2*zcomp.PageSize {
					t.Fatalf("len(Buf) = %d", len(s.Buf))
				}
				roundTrip(t, s, uint64(i), src, out)
				p.Put(s)
			}
			st := p.Stats()
			if st.Gets != 100 || st.Algorithm != "lz4" || st.Mode != m {
				t.Errorf("stats: %+v", st)
			}
			if m == Pooled && st.Allocated != 2 {
				t.Errorf("pooled prealloc: %d streams allocated, want 2", st.Allocated)
			}
			released := 0
			p.cfgOnRelease(func() { released++ })
			p.Kill()
			if released != 1 || !p.Stats().Destroyed || p.Stats().Allocated != 0 {
				t.Errorf("after Kill: released=%d stats=%+v", released, p.Stats())
			}
			if _, err := p.Get(); !errors.Is(err, ErrDestroyed) {
				t.Errorf("Get after destroy: %v", err)
			}
		})
	}
}

// cfgOnRelease lets a test set OnRelease after creation.
func (p *Pool) cfgOnRelease(f func()) { p.onRelease = f }

func TestDoublePutPanics(t *testing.T) {
	for _, m := range modes {
		p, err := NewPool(PoolConfig{Backend: lz4(t), Mode: m, Max: 1})
		if err != nil {
			t.Fatal(err)
		}
		s, _ := p.Get()
		p.Put(s)
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%v: double Put did not panic", m)
				}
			}()
			p.Put(s)
		}()
	}
}

// countingBackend counts live contexts, to check what a pool allocates.
type countingBackend struct {
	zcomp.Backend
	live, made atomic.Int64
}

type countingCtx struct {
	zcomp.Context
	b *countingBackend
}

func (c countingCtx) Close() { c.b.live.Add(-1); c.Context.Close() }

func (b *countingBackend) NewContext(p zcomp.Params) (zcomp.Context, error) {
	c, err := b.Backend.NewContext(p)
	if err != nil {
		return nil, err
	}
	b.live.Add(1)
	b.made.Add(1)
	return countingCtx{c, b}, nil
}

// TestPoolLifetime: a primary pool preallocates, a secondary one allocates
// on first Get; a killed pool (replaced, as an algorithm switch does) lives
// on while a page it compressed pins it, and is destroyed at its last Unref.
func TestPoolLifetime(t *testing.T) {
	for _, m := range modes {
		t.Run(m.String(), func(t *testing.T) {
			prim := &countingBackend{Backend: lz4(t)}
			sec := &countingBackend{Backend: lz4(t)}
			p0, err := NewPool(PoolConfig{Backend: prim, Mode: m, Prealloc: true})
			if err != nil {
				t.Fatal(err)
			}
			var released atomic.Int32
			p1, err := NewPool(PoolConfig{Backend: sec, Mode: m, OnRelease: func() { released.Add(1) }})
			if err != nil {
				t.Fatal(err)
			}
			if prim.made.Load() == 0 {
				t.Error("primary pool preallocated nothing")
			}
			if sec.made.Load() != 0 || p1.Stats().Allocated != 0 {
				t.Errorf("lazy secondary pool allocated %d contexts before first Get", sec.made.Load())
			}
			src, out := make([]byte, zcomp.PageSize), make([]byte, zcomp.PageSize)
			if !p1.TryRef() {
				t.Fatal("TryRef failed on a live pool")
			}
			s, err := p1.Get()
			if err != nil {
				t.Fatal(err)
			}
			if s.Pool() != p1 || sec.made.Load() != 1 {
				t.Errorf("first secondary Get: pool %p want %p, made %d", s.Pool(), p1, sec.made.Load())
			}
			roundTrip(t, s, 1, src, out)
			s.Pool().Ref() // a stored page pins the pool
			p1.Put(s)
			p1.Unref() // TryRef's
			// Replaced: the creator's reference goes, the pool lives on for its page.
			p1.Kill()
			if released.Load() != 0 || p1.Stats().Destroyed {
				t.Fatal("old pool destroyed while a page still references it")
			}
			// Decompressing the old page still works with the old pool.
			s2, err := p1.Get()
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, s2, 2, src, out)
			p1.Put(s2)
			p1.Unref() // the page is freed
			if released.Load() != 1 || !p1.Stats().Destroyed || sec.live.Load() != 0 {
				t.Errorf("old pool not destroyed after its last page: released=%d live=%d", released.Load(), sec.live.Load())
			}
			p0.Kill()
			if prim.live.Load() != 0 {
				t.Errorf("primary contexts still live after Kill: %d", prim.live.Load())
			}
		})
	}
}
