package recompress

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy("")
	if err != nil || p.String() != DefaultPolicy.String() {
		t.Fatalf("empty: %v %v", p, err)
	}
	p, err = ParsePolicy("idle_age=600 interval=1m cpu=0.25 type=huge_idle,idle max_pages=64")
	want := Policy{IdleAge: 10 * time.Minute, Interval: time.Minute, CPUFraction: 0.25,
		Types: []blockdev.RecompressType{blockdev.RecompressHugeIdle, blockdev.RecompressIdle}, MaxPages: 64}
	if err != nil || p.String() != want.String() {
		t.Fatalf("got %v, %v; want %v", p, err, want)
	}
	if again, err := ParsePolicy(p.String()); err != nil || again.String() != p.String() {
		t.Fatalf("round trip: %v, %v", again, err)
	}
	for _, c := range []struct{ in, msg string }{
		{"cpu=0", "(0, 1]"},
		{"cpu=1.5", "(0, 1]"},
		{"cpu=lots", "fraction"},
		{"interval=0", "positive"},
		{"idle_age=-5s", "seconds"},
		{"type=cold", "idle, huge or huge_idle"},
		{"max_pages=0", "positive"},
		{"budget=1", "unknown key"},
	} {
		if _, err := ParsePolicy(c.in); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParsePolicy(%q) = %v, want an error containing %q", c.in, err, c.msg)
		}
	}
}

func testDevice(t *testing.T, pages int) (*blockdev.Device, [][]byte) {
	t.Helper()
	d, err := blockdev.New(blockdev.Config{Name: "p", Size: int64(pages) * blockdev.PageSize, Algorithm: "lz4", StreamMode: streams.DefaultMode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	r := rand.New(rand.NewPCG(1, 2))
	data := make([][]byte, pages)
	words := strings.Fields("the quick brown fox jumps over a lazy dog while uzram compresses every page it is given")
	for i := range data {
		var b bytes.Buffer
		for b.Len() < blockdev.PageSize {
			b.WriteString(words[r.IntN(len(words))])
			b.WriteByte(' ')
		}
		data[i] = b.Bytes()[:blockdev.PageSize]
		if err := d.WriteAt(data[i], uint64(i)*blockdev.PageSize, nil); err != nil {
			t.Fatal(err)
		}
	}
	return d, data
}

// TestPolicyBudget: the policy recompresses idle pages in the background,
// its work shows in the stats, and its CPU time stays within the budget.
func TestPolicyBudget(t *testing.T) {
	const pages = 400
	const budget = 0.3
	d, data := testDevice(t, pages)
	if err := d.SetRecompAlgorithm(1, "zstd", zcomp.Params{}, ""); err != nil {
		t.Fatal(err)
	}
	before := d.Stats()
	r, err := StartPolicy(d, Policy{Interval: 10 * time.Millisecond, CPUFraction: budget,
		Types: []blockdev.RecompressType{blockdev.RecompressIdle}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for r.Status().Total.Recompressed < pages && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	r.Stop()
	st := r.Status()
	after := d.Stats()
	t.Logf("status %+v", st)
	t.Logf("mm_stat before %safter  %s", before.MMStat(), after.MMStat())
	if st.Total.Recompressed != pages || after.PriorityPages[1] != pages || after.Recomp.BackgroundRuns == 0 {
		t.Fatalf("policy recompressed %d pages (device: %v at priority 1, %d background runs)", st.Total.Recompressed, after.PriorityPages, after.Recomp.BackgroundRuns)
	}
	if after.ComprDataSize >= before.ComprDataSize {
		t.Fatalf("compr_data_size %d -> %d", before.ComprDataSize, after.ComprDataSize)
	}
	// Budget: busy over wall within the fraction, give or take one sleep
	// batch at the end of each pass.
	if ratio := st.Busy.Seconds() / st.Wall.Seconds(); ratio > budget*1.25 {
		t.Fatalf("policy used %.2f of a core (busy %v, wall %v), budget %.2f", ratio, st.Busy, st.Wall, budget)
	}
	got := make([]byte, blockdev.PageSize)
	for i, want := range data {
		if err := d.ReadAt(got, uint64(i)*blockdev.PageSize); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("page %d after the policy: %v", i, err)
		}
	}
}

// TestPolicyNoSecondary: without a secondary algorithm the policy only
// marks pages idle, and says nothing is wrong.
func TestPolicyNoSecondary(t *testing.T) {
	d, _ := testDevice(t, 16)
	r, err := StartPolicy(d, Policy{Interval: time.Millisecond, CPUFraction: 1, Types: []blockdev.RecompressType{blockdev.RecompressHuge}})
	if err != nil {
		t.Fatal(err)
	}
	for r.Status().Passes < 3 {
		time.Sleep(time.Millisecond)
	}
	r.Stop()
	if st := r.Status(); st.LastError != "" || st.Total.Attempted != 0 {
		t.Fatalf("status %+v", st)
	}
	if _, err := StartPolicy(d, Policy{}); err == nil {
		t.Fatal("zero policy accepted")
	}
}

// TestRun: the one-call form the CLI uses.
func TestRun(t *testing.T) {
	d, _ := testDevice(t, 64)
	a, err := ParseAlgorithm("algo=zstd priority=1 level=3")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(d); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	bar := NewBar(&b, false)
	res, err := Run(context.Background(), d, "max_pages=10", bar.Update)
	if err != nil || res.Attempted != 10 {
		t.Fatalf("run: %+v, %v", res, err)
	}
	if _, err := Run(context.Background(), d, "type=cold", nil); err == nil {
		t.Fatal("bad spec accepted")
	}
}
