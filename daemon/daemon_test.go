package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/nbdclient"
)

// startDaemon runs a daemon in-process with one 16M device, uzram0, and
// returns a client for its control socket and its socket directory.
func startDaemon(t *testing.T) (*control.Client, string) {
	t.Helper()
	dir := t.TempDir()
	ready := make(chan struct{})
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		done <- Run(ctx, Config{
			Device:  blockdev.Config{Name: "uzram0", Size: 16 << 20, Streams: 2},
			Socket:  filepath.Join(dir, "uzram0.sock"),
			Control: filepath.Join(dir, "control.sock"),
			Stdout:  io.Discard,
			Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
			Ready:   func() { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon exited early: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not start")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		for _, f := range []string{"uzram0.sock", "control.sock"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
				t.Errorf("%s left behind after shutdown", f)
			}
		}
	})
	return control.NewClient(filepath.Join(dir, "control.sock")), dir
}

func TestControlCreateListRemove(t *testing.T) {
	c, dir := startDaemon(t)
	d, err := c.Create(control.CreateRequest{Size: "8M", Algorithm: "zstd", AlgorithmParams: "level=3", Streams: 1})
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "uzram1" || d.Algorithm != "zstd" || d.AlgorithmParams != "level=3" || d.DiskSize != 8<<20 ||
		d.Streams != 1 || d.Socket != filepath.Join(dir, "uzram1.sock") {
		t.Fatalf("created %+v", d)
	}
	// The new device has its own socket; and every export is reachable by
	// name on every socket.
	nc, err := nbdclient.Dial("unix", d.Socket, "uzram1")
	if err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte("uzram control plane test page "), 200)[:4096]
	for i := range 4 {
		if err := nc.WriteAt(page, uint64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	other, err := nbdclient.Dial("unix", filepath.Join(dir, "uzram0.sock"), "uzram1")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := other.ReadAt(got, 4096); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("read through the other socket: %v", err)
	}
	other.Close()
	d, err = c.Get("uzram1")
	if err != nil || d.MM.OrigDataSize != 4*4096 || d.MM.ComprDataSize == 0 || d.Connections < 1 {
		t.Fatalf("after 4 pages: %+v, %v", d, err)
	}
	mm, err := c.StatFile("uzram1", "mm_stat")
	if err != nil || mm != d.MMStatText || len(strings.Fields(mm)) != 9 {
		t.Fatalf("mm_stat %q, %v", mm, err)
	}

	// Reset is refused while attached, and says what to do.
	err = c.Remove("uzram1")
	if !errors.Is(err, control.ErrBusy) || !strings.Contains(err.Error(), "uzram detach uzram1") {
		t.Fatalf("Remove while attached = %v", err)
	}
	nc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for err = c.Remove("uzram1"); errors.Is(err, control.ErrBusy) && time.Now().Before(deadline); err = c.Remove("uzram1") {
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "uzram1.sock")); !os.IsNotExist(err) {
		t.Fatalf("socket of a reset device still there: %v", err)
	}
	devs, _ := c.List()
	if len(devs) != 1 || devs[0].Name != "uzram0" {
		t.Fatalf("after reset: %+v", devs)
	}
	// The freed name is the next --find.
	if d, err := c.Create(control.CreateRequest{Size: "4K"}); err != nil || d.Name != "uzram1" || d.Algorithm != "lz4" {
		t.Fatalf("second create: %+v, %v", d, err)
	}
}

func TestControlBadCreate(t *testing.T) {
	c, _ := startDaemon(t)
	for _, tc := range []struct {
		req  control.CreateRequest
		kind error
		want string
	}{
		{control.CreateRequest{Size: "4X"}, control.ErrInvalid, `bad size: invalid size "4X"`},
		{control.CreateRequest{Size: "0"}, control.ErrInvalid, "at least one page"},
		{control.CreateRequest{}, control.ErrInvalid, "no size given"},
		{control.CreateRequest{Size: "1M", Algorithm: "lzo"}, control.ErrInvalid, `unknown algorithm "lzo": want one of`},
		{control.CreateRequest{Size: "1M", Algorithm: "zstd", AlgorithmParams: "level=99"}, control.ErrInvalid, "bad algorithm params"},
		{control.CreateRequest{Size: "1M", AlgorithmParams: "speed=9"}, control.ErrInvalid, `unknown key "speed"`},
		{control.CreateRequest{Size: "1M", Streams: -1}, control.ErrInvalid, "bad stream count"},
		{control.CreateRequest{Size: "1M", MemLimit: "much"}, control.ErrInvalid, "bad mem limit"},
		{control.CreateRequest{Size: "1M", StreamMode: "fast"}, control.ErrInvalid, "unknown stream mode"},
		{control.CreateRequest{Name: "../etc", Size: "1M"}, control.ErrInvalid, "bad device name"},
		{control.CreateRequest{Name: "control", Size: "1M"}, control.ErrInvalid, "taken by the control socket"},
		{control.CreateRequest{Name: "uzram0", Size: "1M"}, control.ErrBusy, "uzram0 already exists"},
	} {
		_, err := c.Create(tc.req)
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Create(%+v) = %v, want %v containing %q", tc.req, err, tc.kind, tc.want)
		}
	}
	if devs, _ := c.List(); len(devs) != 1 {
		t.Fatalf("bad requests changed the device list: %+v", devs)
	}
}

func TestControlKnobs(t *testing.T) {
	c, _ := startDaemon(t)
	ok := func(knob, v string) {
		t.Helper()
		if _, err := c.SetKnob("uzram0", knob, v); err != nil {
			t.Fatalf("%s %q: %v", knob, v, err)
		}
	}
	bad := func(knob, v string, kind error, want string) {
		t.Helper()
		_, err := c.SetKnob("uzram0", knob, v)
		if !errors.Is(err, kind) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s %q = %v, want %v containing %q", knob, v, err, kind, want)
		}
	}
	ok("mem_limit", "2M")
	if d, _ := c.Get("uzram0"); d.MM.MemLimit != 2<<20 {
		t.Fatalf("mem_limit 2M gave %d", d.MM.MemLimit)
	}
	ok("mem_used_max", "0")
	ok("compact", "1")
	ok("idle", "all")
	ok("idle", "60")
	ok("recomp_algorithm", "algo=zstd priority=1")
	ok("algorithm_params", "priority=1 level=5")
	ok("algorithm_params", "algo=zstd level=7")
	ok("comp_algorithm", "deflate level=6")
	ok("max_comp_streams", "3")
	d, _ := c.Get("uzram0")
	if d.Algorithm != "deflate" || d.AlgorithmParams != "level=6" || d.Streams != 3 {
		t.Fatalf("after comp_algorithm and max_comp_streams: %+v", d)
	}
	found := false
	for _, cp := range d.Compressors {
		found = found || cp.Current && cp.Priority == 1 && cp.Algorithm == "zstd" && cp.Params == "level=7"
	}
	if !found {
		t.Fatalf("recompression compressor not listed: %+v", d.Compressors)
	}

	bad("mem_limit", "lots", control.ErrInvalid, "bad mem_limit")
	bad("mem_used_max", "5", control.ErrInvalid, "only 0")
	bad("idle", "sometimes", control.ErrInvalid, "want all, or an age in seconds")
	bad("recomp_algorithm", "algo=lzo", control.ErrInvalid, `unknown algorithm "lzo"`)
	bad("recomp_algorithm", "priority=1", control.ErrInvalid, "algo= is required")
	bad("recomp_algorithm", "algo=zstd priority=9", control.ErrInvalid, "want 1..3")
	bad("recompress", "type=old", control.ErrInvalid, "want idle, huge or huge_idle")
	bad("recompress", "threshold=5000", control.ErrInvalid, `threshold "5000": want bytes`)
	bad("algorithm_params", "priority=2 level=3", control.ErrInvalid, "no algorithm at priority 2")
	bad("algorithm_params", "algo=lz4hc level=3", control.ErrInvalid, `uses no algorithm "lz4hc"`)
	bad("algorithm_params", "level=99", control.ErrInvalid, "level 99 out of range")
	bad("comp_algorithm", "snappy", control.ErrInvalid, `unknown algorithm "snappy"`)
	bad("max_comp_streams", "-1", control.ErrInvalid, "bad max_comp_streams")
	bad("frobnicate", "1", control.ErrInvalid, `no knob "frobnicate"`)
	if res, err := c.SetKnob("uzram0", "recompress", "type=idle"); err != nil || res == "" {
		t.Errorf("recompress = %q, %v; want its result", res, err)
	}
	if res, err := c.SetKnob("uzram0", "compact", "1"); err != nil || !strings.HasSuffix(res, " pages freed") {
		t.Errorf("compact = %q, %v", res, err)
	}
	if _, err := c.SetKnob("nope", "compact", "1"); !errors.Is(err, control.ErrNotFound) || !strings.Contains(err.Error(), "devices: uzram0") {
		t.Errorf("knob on an unknown device = %v", err)
	}
}

func TestMetricsExposition(t *testing.T) {
	m := NewMetrics()
	var b bytes.Buffer
	devs := []control.Device{{Name: "uzram0", DiskSize: 4096, MM: control.MMStat{OrigDataSize: 8192, SamePages: 1}, IO: control.IOStat{NotifyFree: 3}}}
	writeMetrics(&b, devs, map[string]map[string][2]int64{"nbd": {"write": {5, 1}}, "ublk": {"discard": {2, 0}}}, m)
	out := b.String()
	for _, want := range []string{
		"# TYPE uzram_orig_data_size_bytes gauge\nuzram_orig_data_size_bytes{device=\"uzram0\"} 8192\n",
		"uzram_same_pages{device=\"uzram0\"} 1\n",
		"# TYPE uzram_notify_free_total counter\nuzram_notify_free_total{device=\"uzram0\"} 3\n",
		"uzram_requests_total{transport=\"nbd\",command=\"write\",result=\"ok\"} 5\n",
		"uzram_requests_total{transport=\"nbd\",command=\"write\",result=\"error\"} 1\n",
		"uzram_requests_total{transport=\"ublk\",command=\"discard\",result=\"ok\"} 2\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "uzram_request_duration_seconds") {
		t.Errorf("latency histogram exported before anything fed it")
	}
	m.Observe("read", 3*time.Microsecond)
	m.Observe("read", 40*time.Microsecond)
	m.Observe("read", 2*time.Second)
	b.Reset()
	writeMetrics(&b, nil, nil, m)
	out = b.String()
	for _, want := range []string{
		"# TYPE uzram_request_duration_seconds histogram\n",
		"uzram_request_duration_seconds_bucket{command=\"read\",le=\"5e-06\"} 1\n",
		"uzram_request_duration_seconds_bucket{command=\"read\",le=\"5e-05\"} 2\n",
		"uzram_request_duration_seconds_bucket{command=\"read\",le=\"1\"} 2\n",
		"uzram_request_duration_seconds_bucket{command=\"read\",le=\"+Inf\"} 3\n",
		"uzram_request_duration_seconds_sum{command=\"read\"} 2.000043\n",
		"uzram_request_duration_seconds_count{command=\"read\"} 3\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("histogram lacks %q:\n%s", want, out)
		}
	}
}

func TestMetricsAddr(t *testing.T) {
	for in, want := range map[string]string{
		"9469":           "127.0.0.1:9469",
		":9100":          "127.0.0.1:9100",
		"0.0.0.0:9469":   "0.0.0.0:9469",
		"[::1]:9469":     "[::1]:9469",
		"192.168.1.5":    "192.168.1.5:9469",
		"localhost:9999": "localhost:9999",
	} {
		if got := MetricsAddr(in); got != want {
			t.Errorf("MetricsAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// MOUNTPOINT: which /dev/nbdN serves an export, then swap or mount.
func TestMountPoint(t *testing.T) {
	dir := t.TempDir()
	old := []string{sysBlock, procDir, procSwaps, mountInfo}
	t.Cleanup(func() { sysBlock, procDir, procSwaps, mountInfo = old[0], old[1], old[2], old[3] })
	sysBlock, procDir = filepath.Join(dir, "sys"), filepath.Join(dir, "proc")
	procSwaps, mountInfo = filepath.Join(dir, "swaps"), filepath.Join(dir, "mountinfo")
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(sysBlock, "nbd0/pid"), "100\n")
	write(filepath.Join(procDir, "100/cmdline"), "nbd-client\x00-unix\x00/run/uzram/uzram1.sock\x00-N\x00uzram1\x00-b\x004096\x00/dev/nbd0\x00")
	write(filepath.Join(sysBlock, "nbd1/pid"), "101\n")
	write(filepath.Join(procDir, "101/cmdline"), "nbd-client\x00-unix\x00/run/uzram/uzram0.sock\x00-name\x00uzram2\x00/dev/nbd1\x00")
	os.MkdirAll(filepath.Join(sysBlock, "nbd2"), 0o755) // not connected: no pid file
	write(procSwaps, "Filename\tType\tSize\tUsed\tPriority\n/dev/nbd0 partition 4194300 0 100\n")
	write(mountInfo, "22 1 43:1 / /mnt/scratch\\040dir rw,relatime shared:1 - ext4 /dev/nbd1 rw\n")

	socks := []string{"/run/uzram/uzram0.sock", "/run/uzram/uzram1.sock"}
	if got := findNBD("", "uzram1", socks); got != "/dev/nbd0" {
		t.Errorf("uzram1 on %q, want /dev/nbd0", got)
	}
	if got := findNBD("", "uzram2", socks); got != "/dev/nbd1" {
		t.Errorf("uzram2 (reached through another device's socket) on %q, want /dev/nbd1", got)
	}
	if got := findNBD("", "uzram1", []string{"/other/daemon.sock"}); got != "" {
		t.Errorf("another daemon's export matched: %q", got)
	}
	if got := findNBD("/dev/nbd2", "uzram3", socks); got != "" {
		t.Errorf("a recorded but disconnected attachment counted: %q", got)
	}
	write(filepath.Join(sysBlock, "nbd2/pid"), "102\n") // netlink: the pid has exited
	if got := findNBD("/dev/nbd2", "uzram3", socks); got != "/dev/nbd2" {
		t.Errorf("recorded attachment: %q, want /dev/nbd2", got)
	}
	if got := mountPoint("/dev/nbd0"); got != "[SWAP]" {
		t.Errorf("mountPoint(nbd0) = %q, want [SWAP]", got)
	}
	if got := mountPoint("/dev/nbd1"); got != "/mnt/scratch dir" {
		t.Errorf("mountPoint(nbd1) = %q, want /mnt/scratch dir", got)
	}
	if got := mountPoint("/dev/nbd2"); got != "" {
		t.Errorf("mountPoint(nbd2) = %q, want none", got)
	}
}
