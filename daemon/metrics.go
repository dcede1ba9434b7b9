package daemon

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/uzram/uzram/control"
)

// Prometheus metrics, in the text exposition format (version 0.0.4) written
// by hand: it is a few lines of text, not worth a dependency.

// MetricsPort is the port `--metrics` uses when given only a host.
const MetricsPort = "9469"

// MetricsAddr completes a --metrics value: a bare port listens on loopback
// only, since the figures tell about the host's memory and are nobody
// else's business unless the admin says so with an explicit host.
func MetricsAddr(v string) string {
	v = strings.TrimSpace(v)
	if _, err := strconv.ParseUint(strings.TrimPrefix(v, ":"), 10, 16); err == nil {
		return net.JoinHostPort("127.0.0.1", strings.TrimPrefix(v, ":"))
	}
	if _, _, err := net.SplitHostPort(v); err != nil {
		return net.JoinHostPort(v, MetricsPort) // a host alone
	}
	return v
}

// latencyBuckets are the histogram's upper bounds: from a cached read on
// the socket (a few microseconds) to a stalled write (a second).
var latencyBuckets = []time.Duration{
	5 * time.Microsecond, 10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second,
}

// histogram counts observations per bucket without locks: the NBD server
// observes every request from many goroutines.
type histogram struct {
	counts []atomic.Int64 // per bucket, not cumulative; last is +Inf
	sumNs  atomic.Int64
}

func newHistogram() *histogram {
	return &histogram{counts: make([]atomic.Int64, len(latencyBuckets)+1)}
}

func (h *histogram) observe(d time.Duration) {
	i := sort.Search(len(latencyBuckets), func(i int) bool { return d <= latencyBuckets[i] })
	h.counts[i].Add(1)
	h.sumNs.Add(int64(d))
}

// Metrics holds request latency histograms per NBD command.
type Metrics struct {
	mu    sync.RWMutex
	hists map[string]*histogram
	// observing is set once a server feeds Observe, so an unfed histogram
	// is not exported as if no request had ever taken any time.
	observing atomic.Bool
}

// NewMetrics returns empty histograms.
func NewMetrics() *Metrics { return &Metrics{hists: map[string]*histogram{}} }

// Observe records that a cmd request took d. It is the latency hook the
// NBD server calls (nbd.ServerOptions.Observe).
func (m *Metrics) Observe(cmd string, d time.Duration) {
	m.observing.Store(true)
	m.mu.RLock()
	h := m.hists[cmd]
	m.mu.RUnlock()
	if h == nil {
		m.mu.Lock()
		if h = m.hists[cmd]; h == nil {
			h = newHistogram()
			m.hists[cmd] = h
		}
		m.mu.Unlock()
	}
	h.observe(d)
}

// writeHistograms writes uzram_request_duration_seconds.
func (m *Metrics) writeHistograms(w io.Writer) {
	if !m.observing.Load() {
		return
	}
	m.mu.RLock()
	cmds := make([]string, 0, len(m.hists))
	for c := range m.hists {
		cmds = append(cmds, c)
	}
	m.mu.RUnlock()
	sort.Strings(cmds)
	fmt.Fprintf(w, "# HELP uzram_request_duration_seconds Time from reading an NBD request to sending its reply.\n")
	fmt.Fprintf(w, "# TYPE uzram_request_duration_seconds histogram\n")
	for _, c := range cmds {
		m.mu.RLock()
		h := m.hists[c]
		m.mu.RUnlock()
		var cum int64
		lbl := labels("command", c)
		for i, b := range latencyBuckets {
			cum += h.counts[i].Load()
			fmt.Fprintf(w, "uzram_request_duration_seconds_bucket{%s,le=\"%s\"} %d\n", lbl, seconds(b), cum)
		}
		cum += h.counts[len(latencyBuckets)].Load()
		fmt.Fprintf(w, "uzram_request_duration_seconds_bucket{%s,le=\"+Inf\"} %d\n", lbl, cum)
		fmt.Fprintf(w, "uzram_request_duration_seconds_sum{%s} %s\n", lbl, seconds(time.Duration(h.sumNs.Load())))
		fmt.Fprintf(w, "uzram_request_duration_seconds_count{%s} %d\n", lbl, cum)
	}
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'g', -1, 64) }

// labels formats label pairs, escaping values as the format requires.
func labels(kv ...string) string {
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		v := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(kv[i+1])
		fmt.Fprintf(&b, "%s=\"%s\"", kv[i], v)
	}
	return b.String()
}

// deviceMetrics are the per-device figures: mm_stat and io_stat by their
// zram names, and the device's size and connections.
var deviceMetrics = []struct {
	name, typ, help string
	get             func(d *control.Device) int64
}{
	{"uzram_disksize_bytes", "gauge", "Device size.", func(d *control.Device) int64 { return d.DiskSize }},
	{"uzram_orig_data_size_bytes", "gauge", "mm_stat orig_data_size: data stored, before compression.", func(d *control.Device) int64 { return d.MM.OrigDataSize }},
	{"uzram_compr_data_size_bytes", "gauge", "mm_stat compr_data_size: data stored, compressed.", func(d *control.Device) int64 { return d.MM.ComprDataSize }},
	{"uzram_mem_used_total_bytes", "gauge", "mm_stat mem_used_total: store memory held.", func(d *control.Device) int64 { return d.MM.MemUsedTotal }},
	{"uzram_mem_limit_bytes", "gauge", "mm_stat mem_limit (0: none).", func(d *control.Device) int64 { return d.MM.MemLimit }},
	{"uzram_mem_used_max_bytes", "gauge", "mm_stat mem_used_max: peak store memory.", func(d *control.Device) int64 { return d.MM.MemUsedMax }},
	{"uzram_same_pages", "gauge", "mm_stat same_pages: same-filled pages, no store memory.", func(d *control.Device) int64 { return d.MM.SamePages }},
	{"uzram_pages_compacted_total", "counter", "mm_stat pages_compacted: pages freed by compaction.", func(d *control.Device) int64 { return d.MM.PagesCompacted }},
	{"uzram_huge_pages", "gauge", "mm_stat huge_pages: pages stored raw.", func(d *control.Device) int64 { return d.MM.HugePages }},
	{"uzram_huge_pages_since_total", "counter", "mm_stat huge_pages_since: pages ever stored raw.", func(d *control.Device) int64 { return d.MM.HugePagesSince }},
	{"uzram_failed_reads_total", "counter", "io_stat failed_reads.", func(d *control.Device) int64 { return d.IO.FailedReads }},
	{"uzram_failed_writes_total", "counter", "io_stat failed_writes.", func(d *control.Device) int64 { return d.IO.FailedWrites }},
	{"uzram_invalid_io_total", "counter", "io_stat invalid_io.", func(d *control.Device) int64 { return d.IO.InvalidIO }},
	{"uzram_notify_free_total", "counter", "io_stat notify_free: pages freed by TRIM or WRITE_ZEROES.", func(d *control.Device) int64 { return d.IO.NotifyFree }},
	{"uzram_partial_writes_total", "counter", "ublk writes completed in part, store memory being short (the kernel sent the rest again).", func(d *control.Device) int64 { return d.PartialWrites }},
	{"uzram_store_reserve_waits_total", "counter", "Writes that found the store's prefaulted reserve empty and waited for its refiller.", func(d *control.Device) int64 { return d.ReserveWaits }},
	{"uzram_store_nomem_total", "counter", "Writes refused (ENOSPC) after the reserve stayed empty with memory short.", func(d *control.Device) int64 { return d.NoMem }},
	{"uzram_store_reserve_bytes", "gauge", "Store memory faulted in ahead of writes, not yet holding pages.", func(d *control.Device) int64 { return d.ReserveBytes }},
	{"uzram_connections", "gauge", "NBD connections in transmission.", func(d *control.Device) int64 { return int64(d.Connections) }},
}

// writeMetrics writes the whole exposition; counts holds the requests
// served by transport ("nbd", "ublk"), then by command.
func writeMetrics(w io.Writer, devs []control.Device, counts map[string]map[string][2]int64, m *Metrics) {
	for _, dm := range deviceMetrics {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", dm.name, dm.help, dm.name, dm.typ)
		for i := range devs {
			fmt.Fprintf(w, "%s{%s} %d\n", dm.name, labels("device", devs[i].Name), dm.get(&devs[i]))
		}
	}
	fmt.Fprintf(w, "# HELP uzram_requests_total Requests served, by transport, command and outcome.\n# TYPE uzram_requests_total counter\n")
	for _, tr := range slices.Sorted(maps.Keys(counts)) {
		for _, c := range slices.Sorted(maps.Keys(counts[tr])) {
			fmt.Fprintf(w, "uzram_requests_total{%s} %d\n", labels("transport", tr, "command", c, "result", "ok"), counts[tr][c][0])
			fmt.Fprintf(w, "uzram_requests_total{%s} %d\n", labels("transport", tr, "command", c, "result", "error"), counts[tr][c][1])
		}
	}
	m.writeHistograms(w)
}

// requestCounts gathers what writeMetrics reports of requests: the NBD
// server's, and every ublk node's summed.
func (d *Daemon) requestCounts() map[string]map[string][2]int64 {
	out := map[string]map[string][2]int64{control.TransportNBD: d.srv.CommandCounts()}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, name := range d.order {
		e := d.devs[name]
		if e.ublk == nil {
			continue
		}
		if out[control.TransportUblk] == nil {
			out[control.TransportUblk] = map[string][2]int64{}
		}
		for c, n := range e.ublk.CommandCounts() {
			sum := out[control.TransportUblk][c]
			out[control.TransportUblk][c] = [2]int64{sum[0] + n[0], sum[1] + n[1]}
		}
	}
	return out
}

func (d *Daemon) metricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		bw := bufio.NewWriter(w)
		writeMetrics(bw, d.List(), d.requestCounts(), d.metrics)
		bw.Flush()
	})
}
