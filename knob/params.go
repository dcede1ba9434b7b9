package knob

import (
	"strings"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/streams"
)

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
		for p := 0; p <= streams.MaxPriority; p++ {
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
