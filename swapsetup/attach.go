// Package swapsetup sets devices up on the host as an admin would, around
// the daemon's control API: attach and detach with nbd-client, swapon and
// swapoff (mkswap, swapon --discard=pages), and the zram-generator style
// config file of `uzram setup`, with its size expressions.
package swapsetup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/uzram/uzram/control"
)

// What `uzram attach`, `detach`, `swapon` and `swapoff` do around the API:
// run nbd-client, mkswap, swapon and swapoff as an admin would, and tell the
// daemon which /dev/nbdN a device went to.

// SysBlock is where the kernel lists block devices; a variable for tests.
var SysBlock = "/sys/block"

// AttachTimeout is nbd-client's -t for attached devices, in seconds.
const AttachTimeout = 600

// runTool runs an admin tool and folds its output into the error, so the
// admin sees why it failed on the same line.
func runTool(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = strings.TrimSpace(msg[i+1:]) // the last line says what went wrong
		}
		if msg != "" {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// nbdDevices lists /dev/nbdN in N order, loading the nbd module if there
// are none yet.
func nbdDevices() ([]string, error) {
	list := func() []string {
		paths, _ := filepath.Glob(filepath.Join(SysBlock, "nbd*"))
		var out []string
		for _, p := range paths {
			if control.IsNBD("/dev/" + filepath.Base(p)) {
				out = append(out, "/dev/"+filepath.Base(p))
			}
		}
		sort.Slice(out, func(i, j int) bool { return nbdIndex(out[i]) < nbdIndex(out[j]) })
		return out
	}
	if devs := list(); len(devs) > 0 {
		return devs, nil
	}
	if err := runTool("modprobe", "nbd"); err != nil {
		return nil, fmt.Errorf("no /dev/nbd devices and loading the nbd module failed: %w", err)
	}
	if devs := list(); len(devs) > 0 {
		return devs, nil
	}
	return nil, errors.New("no /dev/nbd devices even after modprobe nbd")
}

// nbdIndex is N of /dev/nbdN.
func nbdIndex(dev string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(dev, "/dev/nbd"))
	return n
}

// nbdFree reports whether /dev/nbdN is unused: no connection (the kernel
// shows a pid file only while connected) and no size.
func nbdFree(dev string) bool {
	dir := filepath.Join(SysBlock, filepath.Base(dev))
	if _, err := os.Stat(filepath.Join(dir, "pid")); err == nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, "size"))
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// FreeNBD picks the first unused /dev/nbdN.
func FreeNBD() (string, error) {
	devs, err := nbdDevices()
	if err != nil {
		return "", err
	}
	for _, d := range devs {
		if nbdFree(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("all %d /dev/nbd devices are in use: detach one, or load nbd with more (modprobe nbd nbds_max=N)", len(devs))
}

// Attach connects device name to an NBD device (nbd "" picks a free one)
// with the flags a swap device needs, and returns the /dev/nbdN.
func Attach(c *control.Client, name, nbd string, swap bool) (string, error) {
	d, err := c.Get(name)
	if err != nil {
		return "", err
	}
	if d.NBD != "" {
		return "", fmt.Errorf("%s is already attached to %s", name, d.NBD)
	}
	if d.Socket == "" {
		return "", fmt.Errorf("%s has no unix socket to attach through", name)
	}
	if nbd == "" {
		if nbd, err = FreeNBD(); err != nil {
			return "", err
		}
	} else if !control.IsNBD(nbd) {
		return "", fmt.Errorf("bad NBD device %q: want /dev/nbdN, like /dev/nbd0", nbd)
	} else if _, err := nbdDevices(); err != nil {
		return "", err
	} else if !nbdFree(nbd) {
		return "", fmt.Errorf("%s is in use (or does not exist): pick a free one, or leave it out", nbd)
	}
	// -b 4096: whole pages, no read-modify-write; two connections spread
	// the work over the server's workers. -t: with more than one
	// connection the kernel declares one dead after a single request
	// timeout (30 s unless set) and fails I/O once all are; a local server
	// is only that slow when the machine is deep in reclaim, which is
	// exactly when swap must not fail. A server that exits closes its
	// sockets, which the kernel sees at once, whatever the timeout.
	args := []string{"-unix", d.Socket, "-N", name, "-b", "4096", "-connections", "2", "-t", strconv.Itoa(AttachTimeout)}
	if swap {
		args = append(args, "-swap") // nbd-client mlocks itself: it must not be swapped out to itself
	}
	if err := runTool("nbd-client", append(args, nbd)...); err != nil {
		return "", err
	}
	if swap {
		noWBT(nbd)
		capRequests(nbd)
	}
	if err := c.SetAttachment(name, nbd); err != nil {
		runTool("nbd-client", "-d", nbd)
		return "", err
	}
	return nbd, nil
}

// noWBT turns writeback throttling off on a swap device's queue: wbt holds
// swap writes back to meet a latency target meant for disks, so under
// memory pressure reclaim waits in wbt_wait while memory runs out (seen in
// the guest, docs/guest.md). zram has no such queue. Best effort: a kernel
// without wbt has no file.
func noWBT(node string) {
	_ = os.WriteFile(filepath.Join(SysBlock, filepath.Base(node), "queue", "wbt_lat_usec"), []byte("0\n"), 0)
}

// swapRequestKB is the largest request a swap device on nbd should get.
// Linux 6.1's nbd capped requests at 128 KiB; 6.12's leaves the block
// layer's 1280 KiB, and under swap pressure requests that large went past
// what the server keeps prefaulted for a connection (in the guest: ENOSPC,
// then a dead connection; docs/guest.md).
const swapRequestKB = 128

// capRequests lowers a swap device's max_sectors_kb to swapRequestKB when
// the kernel set it higher. Best effort, as noWBT.
func capRequests(node string) {
	f := filepath.Join(SysBlock, filepath.Base(node), "queue", "max_sectors_kb")
	b, err := os.ReadFile(f)
	if err != nil {
		return
	}
	if kb, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && kb > swapRequestKB {
		_ = os.WriteFile(f, []byte(strconv.Itoa(swapRequestKB)+"\n"), 0)
	}
}

// Detach disconnects a device, named or by its /dev/nbdN, and returns the
// device name and the /dev/nbdN.
func Detach(c *control.Client, target string) (string, string, error) {
	name, nbd := target, ""
	if control.IsNBD(target) {
		nbd, name = target, ""
		devs, err := c.List()
		if err != nil {
			return "", "", err
		}
		for _, d := range devs {
			if d.NBD == target {
				name = d.Name
			}
		}
		if name == "" {
			// Someone else's NBD device is not ours to disconnect.
			return "", "", fmt.Errorf("%s is not attached to a device of this uzram daemon (nbd-client -d %s would force it)", target, target)
		}
	} else {
		d, err := c.Get(target)
		if err != nil {
			return "", "", err
		}
		if d.NBD == "" {
			return "", "", fmt.Errorf("%s is not attached to an NBD device", target)
		}
		nbd = d.NBD
	}
	if err := runTool("nbd-client", "-d", nbd); err != nil {
		return name, nbd, err
	}
	if name != "" {
		if err := c.SetAttachment(name, ""); err != nil {
			return name, nbd, err
		}
	}
	return name, nbd, nil
}

// SwapOptions describe a swap device for SwapOn.
type SwapOptions struct {
	Create   control.CreateRequest
	Priority int      // swapon -p; negative: the kernel's default
	Recomp   []string // recompression algorithms, priority 1, 2, ... ("zstd" or "zstd level=3")
}

// SwapOn creates a device, sets its recompression algorithms, attaches it
// (a ublk device is its own /dev/ublkbN), makes it swap and turns it on
// with discard, so swap's frees reach the device. It returns the device's
// name and node. If a step fails, the steps before it are undone (detach,
// reset) and the error says so: nothing is left behind.
func SwapOn(c *control.Client, o SwapOptions) (string, string, error) {
	d, err := c.Create(o.Create)
	if err != nil {
		return "", "", err
	}
	// What was done so far, undone in reverse if a later step fails. The
	// closures hold their own copies of the name and node.
	name, node := d.Name, ""
	undo := []func() error{func() error { return RemoveWhenFree(c, name) }}
	fail := func(err error) (string, string, error) {
		var undoErrs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				undoErrs = append(undoErrs, uerr)
			}
		}
		if len(undoErrs) > 0 {
			return "", "", fmt.Errorf("%w; undoing it failed too, %s is left: %w", err, name, errors.Join(undoErrs...))
		}
		return "", "", fmt.Errorf("%w (%s undone)", err, name)
	}
	for i, r := range o.Recomp {
		algo, params, _ := strings.Cut(strings.TrimSpace(r), " ")
		if _, err = c.SetKnob(name, "recomp_algorithm", fmt.Sprintf("algo=%s priority=%d", algo, i+1)); err != nil {
			return fail(err)
		}
		if params = strings.TrimSpace(params); params != "" {
			if _, err = c.SetKnob(name, "algorithm_params", fmt.Sprintf("priority=%d %s", i+1, params)); err != nil {
				return fail(err)
			}
		}
	}
	if d.Transport == control.TransportUblk {
		node = d.Node
		noWBT(node)
	} else {
		if node, err = Attach(c, name, "", true); err != nil {
			return fail(err)
		}
		attached := node
		undo = append(undo, func() error { _, _, err := Detach(c, attached); return err })
	}
	if err = runTool("mkswap", node); err != nil {
		return fail(err)
	}
	args := []string{"--discard=pages"}
	if o.Priority >= 0 {
		args = append(args, "-p", strconv.Itoa(o.Priority))
	}
	if err = runTool("swapon", append(args, node)...); err != nil {
		return fail(err)
	}
	return name, node, nil
}

// SwapOff undoes SwapOn: swapoff, detach (NBD), reset. It returns the
// node the device was on.
func SwapOff(c *control.Client, name string) (string, error) {
	d, err := c.Get(name)
	if err != nil {
		return "", err
	}
	if d.Node == "" {
		return "", fmt.Errorf("%s is not attached to an NBD device, so it is not swap", name)
	}
	if d.MountPoint == "[SWAP]" {
		if err := runTool("swapoff", d.Node); err != nil {
			return "", err
		}
	}
	if d.Transport == control.TransportUblk {
		return d.Node, c.Remove(name)
	}
	if _, _, err := Detach(c, name); err != nil {
		return "", err
	}
	return d.Node, RemoveWhenFree(c, name)
}

// RemoveWhenFree resets a device that was just detached: the kernel closes
// its connections right after nbd-client -d returns, not before, so a busy
// device is given a few seconds to let go.
func RemoveWhenFree(c *control.Client, name string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Remove(name)
		if !errors.Is(err, control.ErrBusy) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
