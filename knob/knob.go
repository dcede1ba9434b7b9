// Package knob is the table of a device's writable zram attributes (its
// sysfs files, as zram's attribute table declares them), one entry each:
// the name, how the CLI spells a write, and what a write does (parse the
// value, apply it to the device, say what happened). The CLI makes its
// commands from it; the daemon runs it for the control API.
package knob

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
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

// Knob is one writable attribute. Values use zram's syntax for the sysfs
// file of the same name; each is checked so that a bad one is refused, as a
// control.ErrInvalid error with the right spelling, before the device sees it.
type Knob struct {
	Name string // zram's file name, and the API's: mem_limit

	// The CLI's command is Name with '-' for '_': `uzram mem-limit NAME SIZE`.
	Usage     string // one line for --help
	ArgsUsage string // what follows NAME; "" for nothing
	// Value turns the command's arguments after NAME into the value written;
	// nil joins them with spaces, so quoting is optional (see ValueOf).
	Value func(args []string) (string, error)
	// Long knobs may run for minutes: the CLI waits for them without a
	// deadline. Progress ones report recompress.Result while they run.
	Long, Progress bool

	// Set parses value, applies it to dev and says what it did ("" for
	// nothing to tell). ctx ends when the caller goes away, and may carry a
	// progress callback (control.ProgressFrom).
	Set func(ctx context.Context, dev *blockdev.Device, value string) (string, error)
}

// All are the knobs, in the order the CLI lists them.
var All = []Knob{
	{
		Name: "mem_limit", Usage: "set the device's store memory limit (0: none)", ArgsUsage: "SIZE", Value: one("SIZE, like 1G"),
		Set: func(_ context.Context, dev *blockdev.Device, v string) (string, error) {
			n, err := sizes.Parse(v)
			if err != nil {
				return "", control.Errorf(control.ErrInvalid, "bad mem_limit: %v (0 for none)", err)
			}
			if err := dev.SetMemLimit(n); err != nil {
				return "", control.Errorf(control.ErrInvalid, "%s: mem_limit: %v", dev.Name(), err)
			}
			return "", nil
		},
	},
	{
		Name: "mem_used_max", Usage: "reset mem_used_max to the current use", ArgsUsage: "reset",
		Value: func(a []string) (string, error) {
			if len(a) != 1 || a[0] != "reset" && a[0] != "0" {
				return "", fmt.Errorf("mem-used-max takes NAME reset, got %q", strings.Join(a, " "))
			}
			return "0", nil
		},
		Set: func(_ context.Context, dev *blockdev.Device, v string) (string, error) {
			if v != "0" {
				return "", control.Errorf(control.ErrInvalid, "bad mem_used_max value %q: only 0 (reset to the current use) is accepted, as in zram", v)
			}
			dev.ResetMemUsedMax()
			return "", nil
		},
	},
	{
		Name: "compact", Usage: "give sparse store memory back to the OS", Long: true,
		Value: func([]string) (string, error) { return "1", nil },
		Set: func(_ context.Context, dev *blockdev.Device, _ string) (string, error) {
			return fmt.Sprintf("%d pages freed", dev.Compact()), nil
		},
	},
	{
		Name: "idle", Usage: "mark pages idle: all, or those untouched for SECONDS", ArgsUsage: "all|SECONDS", Value: one("all or SECONDS"),
		Set: func(_ context.Context, dev *blockdev.Device, v string) (string, error) {
			age, err := parseIdle(v)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%d pages idle", dev.MarkIdle(age)), nil
		},
	},
	{
		Name: "recomp_algorithm", Usage: "set a recompression algorithm", ArgsUsage: `"algo=zstd priority=1"`,
		Set: func(_ context.Context, dev *blockdev.Device, v string) (string, error) {
			a, err := recompress.ParseAlgorithm(v)
			if err != nil {
				return "", control.Errorf(control.ErrInvalid, "bad %v", err)
			}
			if err := a.Apply(dev); err != nil {
				return "", control.Errorf(control.ErrInvalid, "%s: %v", dev.Name(), err)
			}
			return "", nil
		},
	},
	{
		Name: "recompress", Usage: "recompress idle or huge pages", ArgsUsage: `"type=idle|huge|huge_idle threshold=N max_pages=N"`,
		Long: true, Progress: true,
		Set: runRecompress,
	},
	{
		Name: "algorithm_params", Usage: "set an algorithm's parameters", ArgsUsage: `"[priority=N|algo=NAME] level=N dict=PATH"`,
		Set: func(_ context.Context, dev *blockdev.Device, v string) (string, error) {
			return "", setAlgorithmParams(dev, v)
		},
	},
	// Beyond zram, which fixes these at setup: switch the primary algorithm
	// ("zstd level=3"), change the stream count.
	{
		Name: "comp_algorithm", Usage: "switch the primary algorithm (stored pages keep theirs)", ArgsUsage: "ALGORITHM [level=N ...]",
		Set: func(_ context.Context, dev *blockdev.Device, v string) (string, error) {
			algo, params, _ := strings.Cut(v, " ")
			if err := checkAlgo("comp_algorithm", algo); err != nil {
				return "", err
			}
			p, err := backendParams("comp_algorithm", algo, params)
			if err != nil {
				return "", err
			}
			if err := dev.SetAlgorithm(algo, p, strings.TrimSpace(params)); err != nil {
				return "", control.Errorf(control.ErrInvalid, "%s: comp_algorithm: %v", dev.Name(), err)
			}
			return "", nil
		},
	},
	{
		Name: "max_comp_streams", Usage: "set the number of compression streams (0: one per CPU)", ArgsUsage: "N", Value: one("stream count"),
		Set: func(_ context.Context, dev *blockdev.Device, v string) (string, error) {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return "", control.Errorf(control.ErrInvalid, "bad max_comp_streams %q: want 0 (one per CPU) or more", v)
			}
			if err := dev.SetStreams(n); err != nil {
				return "", control.Errorf(control.ErrInvalid, "%s: max_comp_streams: %v", dev.Name(), err)
			}
			return "", nil
		},
	},
}

// Lookup finds a knob by its zram name.
func Lookup(name string) (Knob, bool) {
	for _, k := range All {
		if k.Name == name {
			return k, true
		}
	}
	return Knob{}, false
}

// Names lists the knobs' names.
func Names() []string {
	out := make([]string, len(All))
	for i, k := range All {
		out[i] = k.Name
	}
	return out
}

// Command is the CLI's command for the knob: its name with '-' for '_'.
func (k Knob) Command() string { return strings.ReplaceAll(k.Name, "_", "-") }

// ValueOf is the value a command's arguments after NAME write.
func (k Knob) ValueOf(args []string) (string, error) {
	if k.Value == nil {
		return strings.Join(args, " "), nil
	}
	return k.Value(args)
}

// one is a Value that takes exactly one argument, what.
func one(what string) func([]string) (string, error) {
	return func(args []string) (string, error) {
		if len(args) != 1 {
			return "", fmt.Errorf("want one %s, got %q", what, strings.Join(args, " "))
		}
		return args[0], nil
	}
}

// runRecompress is zram's recompress, reporting progress if ctx asks.
func runRecompress(ctx context.Context, dev *blockdev.Device, v string) (string, error) {
	if _, err := recompress.Parse(v); err != nil {
		return "", control.Errorf(control.ErrInvalid, "bad %v", err)
	}
	var progress func(recompress.Result)
	if fn := control.ProgressFrom(ctx); fn != nil {
		progress = func(r recompress.Result) { fn(r) }
	}
	res, err := recompress.Run(ctx, dev, v, progress)
	if errors.Is(err, blockdev.ErrNoRecompAlgorithm) {
		return "", control.Errorf(control.ErrInvalid, "%s: recompress: %v", dev.Name(), err)
	}
	if err != nil {
		return "", fmt.Errorf("knob: %s: recompress: %w", dev.Name(), err)
	}
	return recompress.FormatResult(res), nil
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

func parsePrio(knob, v string, lo int) (int, error) {
	p, err := strconv.Atoi(v)
	if err != nil || p < lo || p > streams.MaxPriority {
		return 0, control.Errorf(control.ErrInvalid, "bad %s priority %q: want %d..%d", knob, v, lo, streams.MaxPriority)
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
