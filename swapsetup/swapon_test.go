package swapsetup

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/uzram/uzram/control"
)

// fakeDaemon answers the control API from a map. A device's node is the
// /dev/nbdN it was attached to (or /dev/ublkbN), and it is swap while the
// fake swapon's list names that node.
type fakeDaemon struct {
	swaps string // the fake tools' list of active swap nodes
	mu    sync.Mutex
	devs  map[string]*control.Device
	order []string
}

func (f *fakeDaemon) info(d *control.Device) control.Device {
	out := *d
	if d.Transport == control.TransportNBD {
		out.Node = d.NBD
	}
	b, _ := os.ReadFile(f.swaps)
	if out.Node != "" && slices.Contains(strings.Fields(string(b)), out.Node) {
		out.MountPoint = "[SWAP]"
	}
	return out
}

func (f *fakeDaemon) List() []control.Device {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []control.Device
	for _, n := range f.order {
		out = append(out, f.info(f.devs[n]))
	}
	return out
}

func (f *fakeDaemon) Get(name string) (control.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devs[name]
	if !ok {
		return control.Device{}, control.Errorf(control.ErrNotFound, "no device %q", name)
	}
	return f.info(d), nil
}

func (f *fakeDaemon) Create(req control.CreateRequest) (control.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.devs[req.Name]; dup {
		return control.Device{}, control.Errorf(control.ErrExists, "device %s already exists", req.Name)
	}
	d := &control.Device{Name: req.Name, Transport: control.TransportNBD, Socket: "/run/uzram/" + req.Name + ".sock"}
	if req.Transport == control.TransportUblk {
		d.Transport, d.Socket, d.Node = control.TransportUblk, "", "/dev/ublkb0"
	}
	f.devs[req.Name] = d
	f.order = append(f.order, req.Name)
	return *d, nil
}

func (f *fakeDaemon) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.devs[name]; !ok {
		return control.Errorf(control.ErrNotFound, "no device %q", name)
	}
	delete(f.devs, name)
	f.order = slices.DeleteFunc(f.order, func(n string) bool { return n == name })
	return nil
}

func (f *fakeDaemon) SetKnob(_ context.Context, name, knob, value string) (string, error) {
	if strings.Contains(value, "algo=nosuch") {
		return "", control.Errorf(control.ErrInvalid, "unknown algorithm nosuch")
	}
	return "", nil
}

func (f *fakeDaemon) SetAttachment(name, nbd string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devs[name]
	if !ok {
		return control.Errorf(control.ErrNotFound, "no device %q", name)
	}
	d.NBD = nbd
	return nil
}

func (f *fakeDaemon) Stop(bool) error { return nil }

func (f *fakeDaemon) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.order)
}

// fakeTool stands in for nbd-client, mkswap, swapon, swapoff and modprobe:
// it logs its command line, keeps /sys/block/nbdN/pid and the swap list as
// the real ones would, and fails when a file fail-TOOL exists.
const fakeTool = `#!/bin/sh
tool=$(basename "$0")
echo "$tool $*" >> "$FAKE_DIR/log"
if [ -e "$FAKE_DIR/fail-$tool" ]; then echo "$tool: fake failure" >&2; exit 1; fi
for last; do :; done
case "$tool" in
nbd-client) if [ "$1" = -d ]; then rm -f "$FAKE_DIR/sys/$(basename "$2")/pid"; else touch "$FAKE_DIR/sys/$(basename "$last")/pid"; fi ;;
swapon) echo "$last" >> "$FAKE_DIR/swaps" ;;
swapoff) grep -vx "$last" "$FAKE_DIR/swaps" > "$FAKE_DIR/swaps.new"; mv "$FAKE_DIR/swaps.new" "$FAKE_DIR/swaps" ;;
esac
`

type fakeHost struct {
	dir string
	d   *fakeDaemon
	c   *control.Client
}

// newFakeHost serves a fakeDaemon and puts the fake tools first in PATH,
// with /dev/nbd0 and /dev/nbd1 in a fake /sys/block.
func newFakeHost(t *testing.T) *fakeHost {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.MkdirAll(bin, 0o755)
	for _, tool := range []string{"nbd-client", "mkswap", "swapon", "swapoff", "modprobe"} {
		if err := os.WriteFile(filepath.Join(bin, tool), []byte(fakeTool), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"nbd0", "nbd1"} {
		os.MkdirAll(filepath.Join(dir, "sys", n, "queue"), 0o755)
		os.WriteFile(filepath.Join(dir, "sys", n, "size"), []byte("0\n"), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "swaps"), nil, 0o644)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_DIR", dir)
	old := SysBlock
	SysBlock = filepath.Join(dir, "sys")
	t.Cleanup(func() { SysBlock = old })

	d := &fakeDaemon{swaps: filepath.Join(dir, "swaps"), devs: map[string]*control.Device{}}
	sock := filepath.Join(dir, "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: control.Handler(d)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return &fakeHost{dir: dir, d: d, c: control.NewClient(sock)}
}

func (h *fakeHost) fail(tool string) {
	os.WriteFile(filepath.Join(h.dir, "fail-"+tool), nil, 0o644)
}

func (h *fakeHost) log() string {
	b, _ := os.ReadFile(filepath.Join(h.dir, "log"))
	return string(b)
}

// assertClean checks that nothing is left: no device, no attachment, no swap.
func (h *fakeHost) assertClean(t *testing.T) {
	t.Helper()
	if names := h.d.names(); len(names) > 0 {
		t.Errorf("devices left behind: %v", names)
	}
	for _, n := range []string{"nbd0", "nbd1"} {
		if _, err := os.Stat(filepath.Join(h.dir, "sys", n, "pid")); err == nil {
			t.Errorf("/dev/%s left attached; tools run:\n%s", n, h.log())
		}
	}
	if b, _ := os.ReadFile(filepath.Join(h.dir, "swaps")); strings.TrimSpace(string(b)) != "" {
		t.Errorf("swap left on: %s", b)
	}
}

// TestSwapOnUndoes: whichever step of `uzram swapon` fails, the steps
// before it are undone (the device reset, its /dev/nbdN detached) and the
// error says so; before, a failed attach left the device in the list.
func TestSwapOnUndoes(t *testing.T) {
	for _, c := range []struct {
		name, fail string
		opts       SwapOptions
		want       string // in the error
		ran        string // the last tool that must have run (the undo), "" for none
	}{
		{"recompression algorithm", "", SwapOptions{Create: control.CreateRequest{Name: "s", Size: "64M"}, Recomp: []string{"nosuch"}}, "unknown algorithm nosuch", ""},
		{"no nbd module", "modprobe", SwapOptions{Create: control.CreateRequest{Name: "s", Size: "64M"}}, "", ""},
		{"nbd-client", "nbd-client", SwapOptions{Create: control.CreateRequest{Name: "s", Size: "64M"}}, "nbd-client: fake failure", ""},
		{"mkswap", "mkswap", SwapOptions{Create: control.CreateRequest{Name: "s", Size: "64M"}}, "mkswap: fake failure", "nbd-client -d /dev/nbd0"},
		{"swapon", "swapon", SwapOptions{Create: control.CreateRequest{Name: "s", Size: "64M"}, Priority: 100}, "swapon: fake failure", "nbd-client -d /dev/nbd0"},
		{"ublk mkswap", "mkswap", SwapOptions{Create: control.CreateRequest{Name: "s", Size: "64M", Transport: control.TransportUblk}}, "mkswap: fake failure", "mkswap /dev/ublkb0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newFakeHost(t)
			if c.fail == "modprobe" {
				// A host without the nbd module: no /dev/nbdN, and modprobe fails.
				os.RemoveAll(filepath.Join(h.dir, "sys"))
				os.MkdirAll(filepath.Join(h.dir, "sys"), 0o755)
				c.want = "loading the nbd module failed"
			}
			if c.fail != "" {
				h.fail(c.fail)
			}
			_, _, err := SwapOn(h.c, c.opts)
			if err == nil {
				t.Fatal("SwapOn succeeded")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "(s undone)") {
				t.Errorf("error %q; want it to contain %q and say the device was undone", err, c.want)
			}
			lines := strings.Split(strings.TrimSpace(h.log()), "\n")
			if c.ran != "" && lines[len(lines)-1] != c.ran {
				t.Errorf("last tool run %q, want %q; all:\n%s", lines[len(lines)-1], c.ran, h.log())
			}
			h.assertClean(t)
		})
	}
}

// TestSetUpUndoes: `uzram setup --config` makes its devices in order; when
// one fails, the ones it made before are swapped off, detached and reset,
// while a device that was there before is left alone.
func TestSetUpUndoes(t *testing.T) {
	h := newFakeHost(t)
	if _, err := h.c.Create(control.CreateRequest{Name: "old", Size: "64M"}); err != nil {
		t.Fatal(err)
	}
	devs := []SwapOptions{
		{Create: control.CreateRequest{Name: "old", Size: "64M"}, Priority: 100},
		{Create: control.CreateRequest{Name: "a", Size: "64M"}, Priority: 100},
		{Create: control.CreateRequest{Name: "b", Size: "64M"}, Priority: 100, Recomp: []string{"nosuch"}},
	}
	var out strings.Builder
	err := SetUp(h.c, devs, &out)
	if err == nil {
		t.Fatal("SetUp succeeded")
	}
	if !strings.Contains(err.Error(), "[b]: ") || !strings.Contains(err.Error(), "undone: a") {
		t.Errorf("error %q; want it to name [b] and say a was undone", err)
	}
	if !strings.Contains(out.String(), "old exists, left as it is") || !strings.Contains(out.String(), "a on /dev/nbd0") {
		t.Errorf("output:\n%s", out.String())
	}
	if names := h.d.names(); !slices.Equal(names, []string{"old"}) {
		t.Errorf("devices after the failed setup: %v, want only the one that was there before", names)
	}
	if !strings.Contains(h.log(), "swapoff /dev/nbd0\nnbd-client -d /dev/nbd0\n") {
		t.Errorf("a was not swapped off and detached; tools run:\n%s", h.log())
	}
	h.d.Remove("old")
	h.assertClean(t)

	// And a setup that works leaves every device as swap.
	if err := SetUp(h.c, devs[1:2], io.Discard); err != nil {
		t.Fatal(err)
	}
	if d, err := h.c.Get("a"); err != nil || d.MountPoint != "[SWAP]" || d.Node != "/dev/nbd0" {
		t.Errorf("after setup: %+v, %v", d, err)
	}
}

// TestSwapOnTunesQueue: a swap device on nbd gets writeback throttling off
// and requests capped at 128 KiB when the kernel allowed more (6.12 leaves
// 1280); a lower cap is left as it is.
func TestSwapOnTunesQueue(t *testing.T) {
	for _, c := range []struct{ had, want string }{{"1280", "128"}, {"64", "64"}} {
		h := newFakeHost(t)
		q := filepath.Join(h.dir, "sys", "nbd0", "queue")
		os.WriteFile(filepath.Join(q, "max_sectors_kb"), []byte(c.had+"\n"), 0o644)
		os.WriteFile(filepath.Join(q, "wbt_lat_usec"), []byte("2000\n"), 0o644)
		name, node, err := SwapOn(h.c, SwapOptions{Create: control.CreateRequest{Name: "s", Size: "64M"}})
		if err != nil || name != "s" || node != "/dev/nbd0" {
			t.Fatalf("SwapOn: %q %q %v", name, node, err)
		}
		for file, want := range map[string]string{"max_sectors_kb": c.want, "wbt_lat_usec": "0"} {
			if b, _ := os.ReadFile(filepath.Join(q, file)); strings.TrimSpace(string(b)) != want {
				t.Errorf("max_sectors_kb was %s: %s is %q, want %s", c.had, file, b, want)
			}
		}
	}
}
