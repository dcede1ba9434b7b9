package daemon

import (
	"context"
	"strings"

	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/knob"
)

// SetKnob implements control.Manager: it runs the knob's entry in package
// knob's table on the device. The result says what compact, idle and
// recompress did.
func (d *Daemon) SetKnob(ctx context.Context, name, knobName, value string) (string, error) {
	k, ok := knob.Lookup(knobName)
	if !ok {
		return "", control.Errorf(control.ErrInvalid, "no knob %q (known: %s)", knobName, strings.Join(knob.Names(), ", "))
	}
	d.mu.Lock()
	e, err := d.lookupLocked(name)
	if err != nil {
		d.mu.Unlock()
		return "", err
	}
	// Hold the device open, not the daemon: a compaction or recompression
	// may take a while and must not stall listing or other devices.
	e.ops.RLock()
	d.mu.Unlock()
	defer e.ops.RUnlock()
	value = strings.TrimSpace(value)
	result, err := k.Set(ctx, e.dev, value)
	if err != nil {
		return "", err
	}
	d.log.Info("knob set", "device", name, "knob", knobName, "value", value, "result", result)
	return result, nil
}
