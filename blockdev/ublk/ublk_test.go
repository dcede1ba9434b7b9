package ublk

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/blockdev/blocktest"
	"github.com/uzram/uzram/streams"
)

// These tests need the kernel's ublk driver: they skip on a host without it
// and run in the guest VM (tests/vm_test.go runs this package's test binary
// there as root).

func needUblk(t *testing.T) *Control {
	t.Helper()
	c, err := OpenControl()
	if errors.Is(err, ErrNoUblk) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newDevice(t *testing.T, size int64) *blockdev.Device {
	t.Helper()
	d, err := blockdev.New(blockdev.Config{Name: "u", Size: size, StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// alignedBuf is page-aligned memory for O_DIRECT.
func alignedBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func openDirect(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestServeModel: concurrent O_DIRECT reads, writes (512 B to 128 KiB, any
// sector alignment) and discards on /dev/ublkbN against a model, then the
// whole device read back; the device's counters agree with its slots.
func TestServeModel(t *testing.T) {
	ctrl := needUblk(t)
	const size, workers = 32 << 20, 4
	dev := newDevice(t, size)
	u, err := Start(ctrl, dev, Options{ID: -1, Depth: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Stop()
	f := openDirect(t, u.Path())
	model := make([]byte, size)
	region := size / workers
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			buf := alignedBuf(t, 128<<10)
			base := int64(w * region)
			for i := 0; i < 400; i++ {
				n := (1 + r.IntN(256)) * 512
				off := base + int64(r.IntN((region-n)/512))*512
				switch r.IntN(5) {
				case 0, 1:
					blocktest.Fill(r, buf[:n], r.IntN(blocktest.Kinds))
					if _, err := f.WriteAt(buf[:n], off); err != nil {
						t.Errorf("write %d@%d: %v", n, off, err)
						return
					}
					copy(model[off:], buf[:n])
				case 2:
					rng := [2]uint64{uint64(off), uint64(n)}
					if err := ioctlRange(f, unix.BLKDISCARD, rng); err != nil {
						t.Errorf("discard %d@%d: %v", n, off, err)
						return
					}
					clear(model[off : off+int64(n)])
				default:
					if _, err := f.ReadAt(buf[:n], off); err != nil {
						t.Errorf("read %d@%d: %v", n, off, err)
						return
					}
					if !bytes.Equal(buf[:n], model[off:off+int64(n)]) {
						t.Errorf("read %d@%d differs from the model", n, off)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	all := alignedBuf(t, size)
	if _, err := f.ReadAt(all, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, model) {
		t.Fatal("the device differs from the model at the end")
	}
	f.Close()
	if err := u.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(u.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after Stop: %v", u.Path(), err)
	}
	if err := dev.Verify(); err != nil {
		t.Fatal(err)
	}
	c := u.CommandCounts()
	if c["read"][0] == 0 || c["write"][0] == 0 || c["discard"][0] == 0 || c["read"][1]+c["write"][1] > 0 {
		t.Fatalf("command counts %v", c)
	}
}

func ioctlRange(f *os.File, req uint, rng [2]uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(unsafe.Pointer(&rng)))
	if e != 0 {
		return e
	}
	return nil
}

// TestDiscardFreesMemory: a whole-device discard (blkdiscard, swap's
// discard=pages) gives every stored page's memory back.
func TestDiscardFreesMemory(t *testing.T) {
	ctrl := needUblk(t)
	const size = 16 << 20
	dev := newDevice(t, size)
	u, err := Start(ctrl, dev, Options{ID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Stop()
	f := openDirect(t, u.Path())
	buf := alignedBuf(t, 1<<20)
	r := rand.New(rand.NewPCG(1, 1))
	for off := int64(0); off < size; off += int64(len(buf)) {
		blocktest.Fill(r, buf, blocktest.Text)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if st := dev.Stats(); st.PagesStored != size/blockdev.PageSize || st.MemUsedTotal == 0 {
		t.Fatalf("after the fill: %d pages, mem_used_total %d", st.PagesStored, st.MemUsedTotal)
	}
	if err := ioctlRange(f, unix.BLKDISCARD, [2]uint64{0, size}); err != nil {
		t.Fatal(err)
	}
	if st := dev.Stats(); st.PagesStored != 0 || st.ComprDataSize != 0 || st.MemUsedTotal != 0 {
		t.Fatalf("after discarding everything: %d pages, compr %d, mem_used_total %d", st.PagesStored, st.ComprDataSize, st.MemUsedTotal)
	}
}

// TestHandoffRecover: a reader-writer keeps I/O going while the device is
// handed off and recovered by a new server of the same store: no request
// fails (the kernel holds them meanwhile) and every byte verifies.
func TestHandoffRecover(t *testing.T) {
	ctrl := needUblk(t)
	const size = 8 << 20
	dev := newDevice(t, size)
	u, err := Start(ctrl, dev, Options{ID: -1})
	if err != nil {
		t.Fatal(err)
	}
	id := u.ID()
	f := openDirect(t, u.Path())
	model := make([]byte, size)
	var mu sync.Mutex
	stop := make(chan struct{})
	ioErr := make(chan error, 1)
	var ops int
	go func() {
		r := rand.New(rand.NewPCG(3, 3))
		buf := alignedBuf(t, 64<<10)
		for {
			select {
			case <-stop:
				ioErr <- nil
				return
			default:
			}
			n := (1 + r.IntN(16)) * 4096
			off := int64(r.IntN((size-n)/4096)) * 4096
			mu.Lock()
			if r.IntN(2) == 0 {
				blocktest.Fill(r, buf[:n], r.IntN(blocktest.Kinds))
				if _, err := f.WriteAt(buf[:n], off); err != nil {
					mu.Unlock()
					ioErr <- err
					return
				}
				copy(model[off:], buf[:n])
			} else {
				if _, err := f.ReadAt(buf[:n], off); err != nil {
					mu.Unlock()
					ioErr <- err
					return
				}
				if !bytes.Equal(buf[:n], model[off:off+int64(n)]) {
					mu.Unlock()
					ioErr <- errors.New("read differs from the model")
					return
				}
			}
			ops++
			mu.Unlock()
		}
	}()
	for round := 0; round < 3; round++ {
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		if err := u.Handoff(); err != nil {
			t.Fatal(err)
		}
		if u, err = Recover(ctrl, dev, id); err != nil {
			t.Fatal(err)
		}
		t.Logf("handoff %d: serving again after %v", round, time.Since(start))
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	if err := <-ioErr; err != nil {
		t.Fatalf("I/O across the handoffs: %v", err)
	}
	all := alignedBuf(t, size)
	if _, err := f.ReadAt(all, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, model) {
		t.Fatal("the device differs from the model after the handoffs")
	}
	t.Logf("%d requests across 3 handoffs", ops)
	f.Close()
	if err := u.Stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRecoverRefusesOtherSize: a successor whose device differs in size
// from the kernel's is refused before it touches anything.
func TestRecoverRefusesOtherSize(t *testing.T) {
	ctrl := needUblk(t)
	dev := newDevice(t, 4<<20)
	u, err := Start(ctrl, dev, Options{ID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Stop()
	if _, err := Recover(ctrl, newDevice(t, 8<<20), u.ID()); err == nil {
		t.Fatal("Recover took a device of another size")
	}
	if _, err := Start(ctrl, newDevice(t, 4<<20), Options{ID: u.ID()}); err == nil {
		t.Fatalf("a second device got id %d", u.ID())
	}
}
