package control

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/uzram/uzram/version"
)

// fakeManager answers the API from a map, to test the wire without a daemon.
type fakeManager struct {
	devs  map[string]Device
	knobs []string
	stops int
}

func (f *fakeManager) List() []Device {
	var out []Device
	for _, d := range f.devs {
		out = append(out, d)
	}
	return out
}

func (f *fakeManager) Get(name string) (Device, error) {
	d, ok := f.devs[name]
	if !ok {
		return Device{}, Errorf(ErrNotFound, "no device %q", name)
	}
	return d, nil
}

func (f *fakeManager) Create(req CreateRequest) (Device, error) {
	if req.Size == "bad" {
		return Device{}, Errorf(ErrInvalid, "bad size %q", req.Size)
	}
	d := Device{Name: req.Name, Algorithm: req.Algorithm, MMStatText: "mm\n", IOStatText: "io\n", DebugStatText: "dbg\n"}
	f.devs[req.Name] = d
	return d, nil
}

func (f *fakeManager) Remove(name string) error {
	if name == "busy" {
		return Errorf(ErrBusy, "busy is in use")
	}
	if _, err := f.Get(name); err != nil {
		return err
	}
	delete(f.devs, name)
	return nil
}

func (f *fakeManager) SetKnob(_ context.Context, name, knob, value string) (string, error) {
	if knob == "frobnicate" {
		return "", Errorf(ErrInvalid, "no knob %q", knob)
	}
	f.knobs = append(f.knobs, name+" "+knob+" "+value)
	if knob == "compact" {
		return "compacted", nil
	}
	return "", nil
}

func (f *fakeManager) SetAttachment(name, nbd string) error {
	d, err := f.Get(name)
	d.NBD = nbd
	f.devs[name] = d
	return err
}

// Stop refuses unless forced while "busy" exists (a ublk node in use).
func (f *fakeManager) Stop(force bool) error {
	if _, busy := f.devs["busy"]; busy && !force {
		return Errorf(ErrBusy, "not stopping: /dev/ublkb0 (busy) is active swap")
	}
	f.stops++
	return nil
}

func serveFake(t *testing.T) (*fakeManager, *Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeManager{devs: map[string]Device{"busy": {Name: "busy"}}}
	srv := &http.Server{Handler: Handler(m)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return m, NewClient(sock)
}

func TestControlRoundTrip(t *testing.T) {
	m, c := serveFake(t)
	d, err := c.Create(CreateRequest{Name: "a", Size: "1G", Algorithm: "zstd"})
	if err != nil || d.Name != "a" || d.Algorithm != "zstd" {
		t.Fatalf("Create = %+v, %v", d, err)
	}
	if devs, err := c.List(); err != nil || len(devs) != 2 {
		t.Fatalf("List = %+v, %v", devs, err)
	}
	for file, want := range map[string]string{"mm_stat": "mm\n", "io_stat": "io\n", "debug_stat": "dbg\n"} {
		if got, err := c.StatFile("a", file); err != nil || got != want {
			t.Errorf("StatFile(%s) = %q, %v; want %q", file, got, err, want)
		}
	}
	if res, err := c.SetKnob("a", "mem_limit", "1G"); err != nil || res != "" {
		t.Fatalf("SetKnob = %q, %v", res, err)
	}
	if res, err := c.SetKnob("a", "compact", "1"); err != nil || res != "compacted" {
		t.Fatalf("SetKnob(compact) = %q, %v", res, err)
	}
	if len(m.knobs) != 2 || m.knobs[0] != "a mem_limit 1G" {
		t.Fatalf("knobs seen: %q", m.knobs)
	}
	if err := c.SetAttachment("a", "/dev/nbd3"); err != nil || m.devs["a"].NBD != "/dev/nbd3" {
		t.Fatalf("SetAttachment: %v, %+v", err, m.devs["a"])
	}
	if err := c.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Version(); err != nil || v != version.Get() {
		t.Fatalf("Version = %+v, %v; want this binary's %+v", v, err, version.Get())
	}
}

// Each kind of failure crosses the wire as its sentinel and its message.
func TestControlErrors(t *testing.T) {
	_, c := serveFake(t)
	for _, tc := range []struct {
		err  error
		kind error
		msg  string
	}{
		{func() error { _, err := c.Get("nope"); return err }(), ErrNotFound, `no device "nope"`},
		{c.Remove("busy"), ErrBusy, "busy is in use"},
		{func() error { _, err := c.Create(CreateRequest{Name: "x", Size: "bad"}); return err }(), ErrInvalid, `bad size "bad"`},
		{knobErr(c, "busy", "frobnicate", "1"), ErrInvalid, `no knob "frobnicate"`},
		{func() error { _, err := c.StatFile("busy", "cpu_stat"); return err }(), ErrInvalid, `no stats file "cpu_stat"`},
		{c.Stop(false), ErrBusy, "not stopping: /dev/ublkb0 (busy) is active swap"},
	} {
		if !errors.Is(tc.err, tc.kind) || tc.err.Error() != tc.msg && !strings.Contains(tc.err.Error(), tc.msg) {
			t.Errorf("got %v, want %v containing %q", tc.err, tc.kind, tc.msg)
		}
		if strings.Contains(tc.err.Error(), "\n") {
			t.Errorf("error %q is not one line", tc.err)
		}
	}
}

// TestControlStop: a forced stop goes through where a plain one is refused.
func TestControlStop(t *testing.T) {
	m, c := serveFake(t)
	if err := c.Stop(true); err != nil {
		t.Fatal(err)
	}
	if m.stops != 1 {
		t.Fatalf("%d stops reached the manager, want 1", m.stops)
	}
}

func knobErr(c *Client, name, knob, value string) error {
	_, err := c.SetKnob(name, knob, value)
	return err
}

func TestControlNoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "control.sock")
	_, err := NewClient(sock).List()
	if !errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), "start one with `uzram serve`") {
		t.Fatalf("List with no daemon = %v", err)
	}
}
