package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDebPackage builds the Debian package with hack/deb.sh (dpkg-deb from a
// staged tree, lintian with the package's justified overrides only), checks
// its control fields and files, then installs it on a Debian system and
// uses it (hack/deb-check.sh): in a qemu guest running Debian's kernel, on
// an overlay of this machine's root, dpkg -i enables the units and starts
// nothing; then systemd boots on that root, and `systemctl start uzram
// uzram-swap` gives a daemon (Type=notify, with a STATUS=) and swap from
// /etc/uzram.conf that `uzram` lists; `uzram swapon --size 256M` works; a
// reload re-executes the daemon with its PID and swap kept; man uzram and
// completion work; systemctl stop swaps off and stops cleanly; dpkg -r and
// -P clean up. The guest part needs what TestGuestSwap needs and is skipped
// without it; the file sorts just before vm_test.go, so the two guests
// never run at once.
func TestDebPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("building and installing the package takes about 3 minutes; skipped with -short")
	}
	need(t, "dpkg-deb", "lintian")
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// Not under /tmp: the guest mounts its own tmpfs there.
	out, err := os.MkdirTemp("/var/tmp", "uzram-deb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(out) })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "bash", filepath.Join(repo, "hack", "deb.sh"))
	build.Env = append(os.Environ(), "OUT="+out)
	start := time.Now()
	stdout, err := build.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("hack/deb.sh (lintian included): %v\n%s", err, stderr)
	}
	deb := strings.TrimSpace(lastLines(string(stdout), 1))
	t.Logf("built %s in %v, lintian clean", filepath.Base(deb), time.Since(start).Round(time.Second))
	if !strings.HasPrefix(filepath.Base(deb), "uzram_") || !strings.HasSuffix(deb, "_amd64.deb") {
		t.Fatalf("deb.sh made %q, want uzram_VERSION_amd64.deb", deb)
	}
	for field, want := range map[string]string{"Package": "uzram", "Depends": "nbd-client", "Recommends": "fio", "Section": "admin"} {
		if got := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, field)); got != want {
			t.Errorf("control field %s: %q, want %q", field, got, want)
		}
	}
	files := run(t, "dpkg-deb", "-c", deb)
	for _, want := range []string{
		"./usr/sbin/uzram", "./lib/systemd/system/uzram.service", "./lib/systemd/system/uzram-swap.service",
		"./etc/uzram.conf", "./usr/share/man/man8/uzram.8.gz", "./usr/share/bash-completion/completions/uzram",
		"./usr/share/zsh/vendor-completions/_uzram", "./usr/share/doc/uzram/copyright",
	} {
		if !strings.Contains(files, " "+want+"\n") {
			t.Errorf("the package lacks %s:\n%s", want, files)
		}
	}
	unit := run(t, "sh", "-c", "dpkg-deb --fsys-tarfile "+deb+" | tar -xO ./lib/systemd/system/uzram.service")
	for _, want := range []string{"Type=notify", "ExecStart=/usr/sbin/uzram serve --no-device"} {
		if !strings.Contains(unit, want+"\n") {
			t.Errorf("the installed uzram.service lacks %q:\n%s", want, unit)
		}
	}

	if os.Getenv("UZRAM_GUEST") == "0" {
		t.Skip("installing it in the guest VM turned off with UZRAM_GUEST=0")
	}
	if missing := guestPrereqs(); len(missing) > 0 {
		t.Skipf("installing it in the guest VM needs %s", strings.Join(missing, ", "))
	}
	check := exec.CommandContext(ctx, "bash", filepath.Join(repo, "hack", "deb-check.sh"), deb)
	check.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	check.WaitDelay = 10 * time.Second
	start = time.Now()
	console, err := check.CombinedOutput()
	text := string(console)
	var records []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "@@ ") || strings.HasPrefix(l, "deb-check: ") {
			records = append(records, l)
		}
	}
	t.Logf("hack/deb-check.sh ran %v:\n%s", time.Since(start).Round(time.Second), strings.Join(records, "\n"))
	if err != nil || !strings.Contains(text, "\ndeb-check: PASS") {
		t.Errorf("installing and using the package failed: %v; last lines:\n%s", err, lastLines(text, 60))
	}
}
