package daemon

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/recompress"
	"github.com/uzram/uzram/sizes"
	"github.com/uzram/uzram/zcomp"
)

// SetKnob implements control.Manager. Values use zram's syntax for the
// sysfs file of the same name; each is checked here so a bad one is
// refused with the right spelling before the device sees it. The result
// says what compact, idle and recompress did.
func (d *Daemon) SetKnob(ctx context.Context, name, knob, value string) (string, error) {
	var result string
	err := d.setKnob(ctx, name, knob, value, &result)
	return result, err
}

func (d *Daemon) setKnob(ctx context.Context, name, knob, value string, result *string) error {
	d.mu.Lock()
	e, err := d.lookupLocked(name)
	if err != nil {
		d.mu.Unlock()
		return err
	}
	// Hold the device open, not the daemon: a compaction or recompression
	// may take a while and must not stall listing or other devices.
	e.ops.RLock()
	d.mu.Unlock()
	defer e.ops.RUnlock()
	dev := e.dev
	value = strings.TrimSpace(value)
	switch knob {
	case "mem_limit":
		n, err := sizes.Parse(value)
		if err != nil {
			return control.Errorf(control.ErrInvalid, "bad mem_limit: %v (0 for none)", err)
		}
		if err := dev.SetMemLimit(n); err != nil {
			return control.Errorf(control.ErrInvalid, "%s: mem_limit: %v", name, err)
		}
	case "mem_used_max":
		if value != "0" {
			return control.Errorf(control.ErrInvalid, "bad mem_used_max value %q: only 0 (reset to the current use) is accepted, as in zram", value)
		}
		dev.ResetMemUsedMax()
	case "compact":
		*result = fmt.Sprintf("%d pages freed", dev.Compact())
	case "idle":
		age, err := parseIdle(value)
		if err != nil {
			return err
		}
		*result = fmt.Sprintf("%d pages idle", dev.MarkIdle(age))
	case "comp_algorithm":
		algo, params, _ := strings.Cut(value, " ")
		if err := checkAlgo("comp_algorithm", algo); err != nil {
			return err
		}
		p, err := backendParams("comp_algorithm", algo, params)
		if err != nil {
			return err
		}
		if err := dev.SetAlgorithm(algo, p, strings.TrimSpace(params)); err != nil {
			return control.Errorf(control.ErrInvalid, "%s: comp_algorithm: %v", name, err)
		}
	case "max_comp_streams":
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 {
			return control.Errorf(control.ErrInvalid, "bad max_comp_streams %q: want 0 (one per CPU) or more", value)
		}
		if err := dev.SetStreams(n); err != nil {
			return control.Errorf(control.ErrInvalid, "%s: max_comp_streams: %v", name, err)
		}
	case "recomp_algorithm":
		a, err := recompress.ParseAlgorithm(value)
		if err != nil {
			return control.Errorf(control.ErrInvalid, "bad %v", err)
		}
		if err := a.Apply(dev); err != nil {
			return control.Errorf(control.ErrInvalid, "%s: %v", name, err)
		}
	case "recompress":
		if _, err := recompress.Parse(value); err != nil {
			return control.Errorf(control.ErrInvalid, "bad %v", err)
		}
		var progress func(recompress.Result)
		if fn := control.ProgressFrom(ctx); fn != nil {
			progress = func(r recompress.Result) { fn(r) }
		}
		res, err := recompress.Run(ctx, dev, value, progress)
		if errors.Is(err, blockdev.ErrNoRecompAlgorithm) {
			return control.Errorf(control.ErrInvalid, "%s: recompress: %v", name, err)
		}
		if err != nil {
			return fmt.Errorf("daemon: %s: recompress: %w", name, err)
		}
		*result = recompress.FormatResult(res)
		d.log.Info("recompressed", "device", name, "result", *result)
	case "algorithm_params":
		if err := setAlgorithmParams(dev, value); err != nil {
			return err
		}
	default:
		return control.Errorf(control.ErrInvalid, "no knob %q (known: %s)", knob, strings.Join(control.Knobs, ", "))
	}
	d.log.Info("knob set", "device", name, "knob", knob, "value", value)
	return nil
}

// parseIdle reads zram's idle value: "all", or an age in seconds.
func parseIdle(v string) (time.Duration, error) {
	if v == "all" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n == 0 {
		return 0, control.Errorf(control.ErrInvalid, "bad idle value %q: want all, or an age in seconds like 300", v)
	}
	return time.Duration(n) * time.Second, nil
}

// maxRecompPrio is zram's ZRAM_MAX_COMPS - 1: priorities 1..3 recompress.
const maxRecompPrio = 3

func parsePrio(knob, v string, lo int) (int, error) {
	p, err := strconv.Atoi(v)
	if err != nil || p < lo || p > maxRecompPrio {
		return 0, control.Errorf(control.ErrInvalid, "bad %s priority %q: want %d..%d", knob, v, lo, maxRecompPrio)
	}
	return p, nil
}

func checkAlgo(knob, algo string) error {
	if _, err := zcomp.Lookup(algo); err != nil {
		return control.Errorf(control.ErrInvalid, "bad %s: unknown algorithm %q: want one of %s", knob, algo, strings.Join(zcomp.Names(), ", "))
	}
	return nil
}

// backendParams parses the backend part of zram's params ("level=N
// dict=PATH") and checks the level against algo.
func backendParams(knob, algo, text string) (zcomp.Params, error) {
	p, err := zcomp.ParseParams(text)
	if err != nil {
		return zcomp.Params{}, control.Errorf(control.ErrInvalid, "bad %s params %q: %v", knob, text, err)
	}
	if err := zcomp.ValidateLevel(algo, p.Level); err != nil {
		return zcomp.Params{}, control.Errorf(control.ErrInvalid, "bad %s params %q: %v", knob, text, err)
	}
	return p, nil
}

// setAlgorithmParams is zram's algorithm_params: "priority=N" or
// "algo=NAME" picks one of the device's current algorithms (default: the
// primary, priority 0), the rest ("level=N dict=PATH") are its new params.
// The device installs the same algorithm with the new params: new pages use
// them, stored pages keep the compressor that wrote them.
func setAlgorithmParams(dev *blockdev.Device, v string) error {
	prio, algo := -1, ""
	var rest []string
	for _, f := range strings.Fields(v) {
		k, val, _ := strings.Cut(f, "=")
		switch k {
		case "priority":
			p, err := parsePrio("algorithm_params", val, 0)
			if err != nil {
				return err
			}
			prio = p
		case "algo":
			algo = val
		default:
			rest = append(rest, f)
		}
	}
	current := map[int]string{}
	for _, c := range dev.Compressors() {
		if c.Current {
			current[c.Priority] = c.Algorithm
		}
	}
	switch {
	case prio < 0 && algo == "":
		prio = 0
	case prio < 0:
		for p := 0; p <= maxRecompPrio; p++ {
			if current[p] == algo {
				prio = p
				break
			}
		}
		if prio < 0 {
			return control.Errorf(control.ErrInvalid, "bad algorithm_params %q: the device uses no algorithm %q (set one with uzram recomp-algorithm)", v, algo)
		}
	}
	have, ok := current[prio]
	if !ok {
		return control.Errorf(control.ErrInvalid, "bad algorithm_params %q: no algorithm at priority %d (set one with uzram recomp-algorithm)", v, prio)
	}
	if algo != "" && algo != have {
		return control.Errorf(control.ErrInvalid, "bad algorithm_params %q: priority %d uses %s, not %s", v, prio, have, algo)
	}
	text := strings.Join(rest, " ")
	p, err := backendParams("algorithm_params", have, text)
	if err != nil {
		return err
	}
	if prio == 0 {
		err = dev.SetAlgorithm(have, p, text)
	} else {
		err = dev.SetRecompAlgorithm(prio, have, p, text)
	}
	if err != nil {
		return control.Errorf(control.ErrInvalid, "%s: algorithm_params: %v", dev.Name(), err)
	}
	return nil
}
