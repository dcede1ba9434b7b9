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

// statusEvery is how often STATUS= is refreshed (when it changed).
const statusEvery = 10 * time.Second

// startNotify sends READY=1 with the first STATUS=, then refreshes the
// status and feeds the watchdog until the returned function is called.
func (d *Daemon) startNotify() (stop func()) {
	status := d.statusLine()
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
	every := statusEvery
	if wd > 0 {
		// Twice per interval, as sd_watchdog_enabled(3) advises.
		every = min(every, wd/2)
		d.log.Info("service manager watchdog", "interval", wd)
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			// statusLine takes the daemon's lock: a daemon stuck holding it
			// stops feeding the watchdog, and the manager restarts it.
			msg := ""
			if s := d.statusLine(); s != status {
				status, msg = s, "STATUS="+s
			}
			if wd > 0 {
				msg = strings.TrimPrefix(msg+"\n"+sdnotify.Watchdog, "\n")
			}
			if msg != "" {
				if _, err := sdnotify.Notify(msg); err != nil {
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
func (d *Daemon) statusLine() string {
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
	var b strings.Builder
	switch len(names) {
	case 0:
		b.WriteString("no device")
	case 1:
		b.WriteString("1 device: " + names[0])
	default:
		fmt.Fprintf(&b, "%d devices: %s", len(names), strings.Join(names, ", "))
	}
	if len(names) > 0 {
		fmt.Fprintf(&b, "; %s stored in %s", sizes.Human(orig), sizes.Human(used))
		if used > 0 {
			fmt.Fprintf(&b, " (ratio %.2f)", float64(orig)/float64(used))
		}
	}
	if rss := residentBytes(); rss > 0 {
		b.WriteString("; rss " + sizes.Human(rss))
	}
	return b.String()
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
