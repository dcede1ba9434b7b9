package daemon

// The service manager's side of the daemon (systemd's Type=notify, package
// sdnotify): READY=1 once every socket listens, STATUS= with the devices
// and memory while it runs, WATCHDOG=1 when the unit sets WatchdogSec=,
// then RELOADING=1 before a re-exec (SIGUSR2, `systemctl reload`; the new
// image sends READY=1 when it serves) or STOPPING=1 when it shuts down.
// Without $NOTIFY_SOCKET none of it runs.

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/uzram/uzram/sdnotify"
	"github.com/uzram/uzram/sizes"
)

// STATUS= is checked every statusCheck and sent at once when the devices
// or their nodes changed, else at most every statusEvery when only the
// figures did.
const (
	statusCheck = time.Second
	statusEvery = 10 * time.Second
)

// startNotify sends READY=1 with the first STATUS=, then keeps the status
// current and feeds the watchdog until the returned function is called.
func (d *Daemon) startNotify() (stop func()) {
	devs, status := d.statusLine()
	sent, err := sdnotify.Notify(sdnotify.Ready + "\nSTATUS=" + status)
	if err != nil {
		d.log.Warn("cannot tell the service manager the daemon is ready", "err", err)
	}
	if !sent {
		return func() {}
	}
	wd, err := sdnotify.WatchdogInterval()
	if err != nil {
		d.log.Warn("no watchdog pings", "err", err)
	}
	every := statusCheck
	if wd > 0 {
		// At least twice per interval, as sd_watchdog_enabled(3) advises.
		every = min(every, wd/2)
		d.log.Info("service manager watchdog", "interval", wd)
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		last, lastPing := time.Now(), time.Now()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			// statusLine takes the daemon's lock: a daemon stuck holding it
			// stops feeding the watchdog, and the manager restarts it.
			nowDevs, nowStatus := d.statusLine()
			var msg []string
			if nowStatus != status && (nowDevs != devs || time.Since(last) >= statusEvery) {
				devs, status, last = nowDevs, nowStatus, time.Now()
				msg = append(msg, "STATUS="+status)
			}
			if wd > 0 && time.Since(lastPing) >= wd/2-every/2 {
				msg = append(msg, sdnotify.Watchdog)
				lastPing = time.Now()
			}
			if len(msg) > 0 {
				if _, err := sdnotify.Notify(strings.Join(msg, "\n")); err != nil {
					d.log.Warn("service manager notification", "err", err)
				}
			}
		}
	}()
	return func() { close(quit); <-done }
}

// notifyStop tells the service manager that the daemon is going: reloading
// (a re-exec, after which the new image reports READY=1) or stopping.
func (d *Daemon) notifyStop(st stop) {
	msg := sdnotify.Stopping + "\nSTATUS=stopping"
	if st.upgrade {
		// MONOTONIC_USEC: systemd 253 and later match it to the reload.
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		msg = sdnotify.Reloading + "\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10) + "\nSTATUS=re-executing"
	}
	if _, err := sdnotify.Notify(msg); err != nil {
		d.log.Warn("service manager notification", "err", err)
	}
}

// statusLine is STATUS=: the devices, where each is attached, what they
// store and in how much memory, and the daemon's resident memory:
// "2 devices: uzram0 on /dev/nbd0, uzram1; 1.2G stored in 310M (ratio 3.96); rss 350M".
// devs is its first part, the devices and their nodes.
func (d *Daemon) statusLine() (devs, line string) {
	d.mu.Lock()
	var names []string
	var orig, used int64
	for _, name := range d.order {
		e := d.devs[name]
		switch {
		case e.ublk != nil:
			name += " on " + e.ublk.Path()
		case e.nbd != "":
			name += " on " + e.nbd
		}
		names = append(names, name)
		s := e.dev.Stats()
		orig += s.OrigDataSize
		used += s.MemUsedTotal
	}
	d.mu.Unlock()
	switch len(names) {
	case 0:
		devs = "no device"
	case 1:
		devs = "1 device: " + names[0]
	default:
		devs = fmt.Sprintf("%d devices: %s", len(names), strings.Join(names, ", "))
	}
	var b strings.Builder
	b.WriteString(devs)
	if len(names) > 0 {
		fmt.Fprintf(&b, "; %s stored in %s", sizes.Human(orig), sizes.Human(used))
		if used > 0 {
			fmt.Fprintf(&b, " (ratio %.2f)", float64(orig)/float64(used))
		}
	}
	if rss := residentBytes(); rss > 0 {
		b.WriteString("; rss " + sizes.Human(rss))
	}
	return devs, b.String()
}

// residentBytes is the process's resident memory (/proc/self/statm), or 0.
func residentBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}
