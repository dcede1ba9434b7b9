package recompress

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/blockdev"
)

// Policy is automatic recompression (beyond zram, which leaves it to cron
// jobs and udev rules): every Interval, mark pages untouched for IdleAge
// idle, then run a background recompress of each of Types in turn, sleeping
// as needed so the work takes at most CPUFraction of one core.
type Policy struct {
	IdleAge     time.Duration             // 0 marks every page idle on each pass
	Interval    time.Duration             // from the end of one pass to the start of the next
	CPUFraction float64                   // of one core, in (0, 1]
	Types       []blockdev.RecompressType // passes in order; zram's type= values
	MaxPages    uint64                    // per run; 0 means no limit
}

// DefaultPolicy is what --auto-recompress gets for the keys it leaves out:
// pages idle for 10 minutes, a pass a minute, a tenth of a core, idle pages
// (huge or not) then huge pages that are still in use.
var DefaultPolicy = Policy{
	IdleAge:     10 * time.Minute,
	Interval:    time.Minute,
	CPUFraction: 0.1,
	Types:       []blockdev.RecompressType{blockdev.RecompressIdle, blockdev.RecompressHuge},
}

// ParsePolicy reads the --auto-recompress value, keys over DefaultPolicy:
//
//	idle_age=SECONDS|DURATION interval=SECONDS|DURATION cpu=FRACTION type=idle,huge max_pages=N
//
// Durations are seconds ("600") or Go durations ("10m").
func ParsePolicy(s string) (Policy, error) {
	p := DefaultPolicy
	p.Types = append([]blockdev.RecompressType(nil), p.Types...)
	kv, err := fields("auto-recompress", s, "idle_age", "interval", "cpu", "type", "max_pages")
	if err != nil {
		return p, err
	}
	if v, ok := kv["idle_age"]; ok {
		if p.IdleAge, err = parseSeconds("idle_age", v); err != nil {
			return p, err
		}
	}
	if v, ok := kv["interval"]; ok {
		if p.Interval, err = parseSeconds("interval", v); err != nil {
			return p, err
		}
	}
	if v, ok := kv["cpu"]; ok {
		if p.CPUFraction, err = strconv.ParseFloat(v, 64); err != nil {
			return p, fmt.Errorf("auto-recompress: cpu %q: want a fraction of one core like 0.1", v)
		}
	}
	if v, ok := kv["type"]; ok {
		p.Types = p.Types[:0]
		for _, t := range strings.Split(v, ",") {
			typ, err := ParseType(t)
			if err != nil {
				return p, fmt.Errorf("auto-recompress: %w", err)
			}
			p.Types = append(p.Types, typ)
		}
	}
	if v, ok := kv["max_pages"]; ok {
		if p.MaxPages, err = strconv.ParseUint(v, 10, 64); err != nil || p.MaxPages == 0 {
			return p, fmt.Errorf("auto-recompress: max_pages %q: want a positive number of pages", v)
		}
	}
	return p, p.Validate()
}

func parseSeconds(key, v string) (time.Duration, error) {
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("auto-recompress: %s %q: want seconds or a duration like 10m", key, v)
	}
	return d, nil
}

// Validate checks the policy's values.
func (p Policy) Validate() error {
	switch {
	case p.IdleAge < 0:
		return fmt.Errorf("auto-recompress: idle_age %v is negative", p.IdleAge)
	case p.Interval <= 0:
		return fmt.Errorf("auto-recompress: interval %v: want a positive duration", p.Interval)
	case !(p.CPUFraction > 0 && p.CPUFraction <= 1):
		return fmt.Errorf("auto-recompress: cpu %v: want a fraction of one core in (0, 1]", p.CPUFraction)
	case len(p.Types) == 0:
		return errors.New("auto-recompress: no type to recompress")
	}
	for _, t := range p.Types {
		if t == 0 || t&^blockdev.RecompressHugeIdle != 0 {
			return fmt.Errorf("auto-recompress: bad type %v", t)
		}
	}
	return nil
}

func (p Policy) String() string {
	types := make([]string, len(p.Types))
	for i, t := range p.Types {
		types[i] = t.String()
	}
	s := fmt.Sprintf("idle_age=%s interval=%s cpu=%g type=%s", seconds(p.IdleAge), seconds(p.Interval), p.CPUFraction, strings.Join(types, ","))
	if p.MaxPages > 0 {
		s += " max_pages=" + strconv.FormatUint(p.MaxPages, 10)
	}
	return s
}

// seconds writes d as ParsePolicy reads it: whole seconds as a number.
func seconds(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10)
	}
	return d.String()
}

// PolicyStatus is what a running policy has done.
type PolicyStatus struct {
	Policy    string
	Passes    int64
	LastPass  time.Time // start of the last finished pass
	Last      Result    // sum of the last pass's runs
	Total     Result    // sum of every run (Candidates, Done... add up)
	Busy      time.Duration
	Wall      time.Duration // time spent in passes, sleeps included
	LastError string        `json:",omitempty"`
}

// Runner is a running policy.
type Runner struct {
	d      *blockdev.Device
	p      Policy
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	st PolicyStatus
}

// minSleep batches the budget's sleeps: a few milliseconds of work, then
// one sleep, rather than a timer per page.
const minSleep = 5 * time.Millisecond

// StartPolicy starts p on d in a goroutine until Stop. Stop it before
// closing the device.
func StartPolicy(d *blockdev.Device, p Policy) (*Runner, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{d: d, p: p, cancel: cancel, done: make(chan struct{})}
	r.st.Policy = p.String()
	go r.loop(ctx)
	return r, nil
}

// Stop ends the policy, interrupting a pass between pages, and waits for it.
func (r *Runner) Stop() {
	r.cancel()
	<-r.done
}

// Status returns what the policy has done so far.
func (r *Runner) Status() PolicyStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

func (r *Runner) loop(ctx context.Context) {
	defer close(r.done)
	// Thread CPU time is this goroutine's only while it stays on one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t := time.NewTimer(r.p.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.pass(ctx)
		t.Reset(r.p.Interval)
	}
}

// pass is one round: mark idle, then each type's run, paced so that CPU
// time over wall time since the pass began stays under the budget.
func (r *Runner) pass(ctx context.Context) {
	start, cpu0 := time.Now(), threadCPU()
	pace := func(Result) {
		busy, wall := threadCPU()-cpu0, time.Since(start)
		owed := time.Duration(float64(busy)/r.p.CPUFraction) - wall
		if owed < minSleep {
			return
		}
		t := time.NewTimer(owed)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	r.d.MarkIdle(r.p.IdleAge)
	var sum Result
	var errText string
	for _, typ := range r.p.Types {
		res, err := r.d.RecompressBackground(ctx, Request{Type: typ, MaxPages: r.p.MaxPages}, pace)
		addResult(&sum, res)
		if err != nil {
			if !errors.Is(err, blockdev.ErrNoRecompAlgorithm) && ctx.Err() == nil {
				errText = err.Error()
			}
			break // no secondary algorithm yet, or stopping
		}
		if res.Preempted || ctx.Err() != nil {
			break
		}
	}
	pace(sum) // the tail of the pass counts too
	busy, wall := threadCPU()-cpu0, time.Since(start)
	r.mu.Lock()
	r.st.Passes++
	r.st.LastPass, r.st.Last, r.st.LastError = start, sum, errText
	addResult(&r.st.Total, sum)
	r.st.Busy += busy
	r.st.Wall += wall
	r.mu.Unlock()
}

func addResult(to *Result, r Result) {
	to.Candidates += r.Candidates
	to.Done += r.Done
	to.Attempted += r.Attempted
	to.Recompressed += r.Recompressed
	to.Skipped += r.Skipped
	to.Incompressible += r.Incompressible
	to.Failed += r.Failed
	to.BytesSaved += r.BytesSaved
	to.MemSaved += r.MemSaved
	to.CPU += r.CPU
	to.Elapsed += r.Elapsed
	to.Preempted = to.Preempted || r.Preempted
}

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
