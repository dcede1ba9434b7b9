package tests

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// threadPolicies counts a process's threads by scheduling policy (field 41
// of /proc/PID/task/TID/stat: 0 SCHED_OTHER, 2 SCHED_RR).
func threadPolicies(t *testing.T, pid int) (rr, total int) {
	t.Helper()
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		t.Fatalf("no threads of %d: %v", pid, err)
	}
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		total++
		if len(f) > 38 && f[38] == "2" {
			rr++
		}
	}
	return rr, total
}

// someData is 1 MiB that compresses and is not same-filled.
func someData() []byte {
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(rand.IntN(4))
	}
	return b
}

// TestRealtimeAuto: by default (--realtime auto) the server's threads run
// in SCHED_OTHER while free memory is above --realtime-below, with one
// real-time thread (the watcher), and all go SCHED_RR when it is below;
// the server serves either way.
func TestRealtimeAuto(t *testing.T) {
	plenty := startServer(t, "--size", "16M", "--realtime-below", "1M")
	if strings.Contains(plenty.stderr(), "SCHED_RR") && strings.Contains(plenty.stderr(), "operation not permitted") {
		t.Skipf("no SCHED_RR here: %s", plenty.stderr())
	}
	writeVerify(t, plenty, someData())
	if rr, total := threadPolicies(t, plenty.cmd.Process.Pid); rr != 1 {
		t.Errorf("--realtime-below 1M: %d of %d threads SCHED_RR, want 1 (the memory watcher)", rr, total)
	}
	if strings.Contains(plenty.stderr(), "now SCHED_RR") {
		t.Errorf("went real-time with memory to spare: %s", plenty.stderr())
	}

	// More than this machine has: short from the start.
	short := startServer(t, "--size", "16M", "--realtime-below", "64T")
	deadline := time.Now().Add(30 * time.Second)
	for {
		rr, total := threadPolicies(t, short.cmd.Process.Pid)
		if rr == total {
			t.Logf("--realtime-below 64T: %d of %d threads SCHED_RR", rr, total)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("--realtime-below 64T: %d of %d threads SCHED_RR after 30 s", rr, total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	writeVerify(t, short, someData())
	if rr, total := threadPolicies(t, short.cmd.Process.Pid); rr != total {
		t.Errorf("after serving: %d of %d threads SCHED_RR; threads started since were missed", rr, total)
	}
	if !strings.Contains(short.stderr(), "free memory short: server threads now SCHED_RR") {
		t.Errorf("no log line for the switch: %s", short.stderr())
	}

	always := startServer(t, "--size", "16M", "--realtime", "always")
	writeVerify(t, always, someData())
	if rr, total := threadPolicies(t, always.cmd.Process.Pid); rr != total {
		t.Errorf("--realtime always: %d of %d threads SCHED_RR", rr, total)
	}
	never := startServer(t, "--size", "16M", "--no-realtime")
	writeVerify(t, never, someData())
	if rr, total := threadPolicies(t, never.cmd.Process.Pid); rr != 0 {
		t.Errorf("--no-realtime: %d of %d threads SCHED_RR", rr, total)
	}
}

func TestRealtimeBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--realtime", "sometimes"}, `--realtime: unknown realtime mode "sometimes" (want never, auto or always)`},
		{[]string{"--no-realtime", "--realtime", "always"}, "--no-realtime contradicts --realtime always"},
		{[]string{"--realtime", "always", "--realtime-below", "1G"}, "--realtime-below applies only to --realtime auto, not always"},
		{[]string{"--realtime-below", "0"}, "--realtime-below: 0 would never go real-time; use --realtime never"},
		{[]string{"--realtime-below", "lots"}, "--realtime-below: "},
	} {
		out := serveFails(t, tc.args...)
		if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "uzram: ") || !strings.Contains(out, tc.want) {
			t.Errorf("uzram serve %s: %q; want one line containing %q", strings.Join(tc.args, " "), out, tc.want)
		}
	}
}
