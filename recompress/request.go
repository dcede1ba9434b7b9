package recompress

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/keyval"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/zcomp"
)

// Request is one recompress run; Result its progress and outcome.
type (
	Request = blockdev.RecompressRequest
	Result  = blockdev.RecompressResult
)

// Parse reads zram's recompress syntax:
//
//	type=idle|huge|huge_idle threshold=BYTES max_pages=N algo=NAME priority=N
//
// Every key is optional; see the package doc for their meaning.
func Parse(s string) (Request, error) {
	var r Request
	kv, err := fields("recompress", s, "type", "threshold", "max_pages", "algo", "priority")
	if err != nil {
		return r, err
	}
	if v, ok := kv["type"]; ok {
		if r.Type, err = ParseType(v); err != nil {
			return r, err
		}
	}
	if v, ok := kv["threshold"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n >= blockdev.HugeThreshold {
			return r, fmt.Errorf("recompress: threshold %q: want bytes in 0..%d (0: none)", v, blockdev.HugeThreshold-1)
		}
		r.Threshold = n
	}
	if v, ok := kv["max_pages"]; ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return r, fmt.Errorf("recompress: max_pages %q: want a positive number of pages (leave it out for no limit)", v)
		}
		r.MaxPages = n
	}
	if v, ok := kv["algo"]; ok {
		if _, err := zcomp.Lookup(v); err != nil {
			return r, fmt.Errorf("recompress: algo: %w", err)
		}
		r.Algorithm = v
	}
	if v, ok := kv["priority"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > streams.MaxPriority {
			return r, fmt.Errorf("recompress: priority %q: want 1..%d", v, streams.MaxPriority)
		}
		r.Priority = n // 0 is 1, as in zram
	}
	return r, nil
}

// ParseType reads a type= value.
func ParseType(v string) (blockdev.RecompressType, error) {
	switch v {
	case "idle":
		return blockdev.RecompressIdle, nil
	case "huge":
		return blockdev.RecompressHuge, nil
	case "huge_idle":
		return blockdev.RecompressHugeIdle, nil
	}
	return 0, fmt.Errorf("recompress: type %q: want idle, huge or huge_idle", v)
}

// Format writes a request back in zram's syntax (Parse(Format(r)) == r).
func Format(r Request) string {
	var f []string
	if r.Type != 0 {
		f = append(f, "type="+r.Type.String())
	}
	if r.Threshold > 0 {
		f = append(f, "threshold="+strconv.Itoa(r.Threshold))
	}
	if r.MaxPages > 0 {
		f = append(f, "max_pages="+strconv.FormatUint(r.MaxPages, 10))
	}
	if r.Algorithm != "" {
		f = append(f, "algo="+r.Algorithm)
	}
	if r.Priority > 0 {
		f = append(f, "priority="+strconv.Itoa(r.Priority))
	}
	return strings.Join(f, " ")
}

// Run parses spec and runs it on d: what `uzram recompress NAME "spec"`
// does. progress may be nil.
func Run(ctx context.Context, d *blockdev.Device, spec string, progress func(Result)) (Result, error) {
	r, err := Parse(spec)
	if err != nil {
		return Result{}, err
	}
	return d.Recompress(ctx, r, progress)
}

// Algorithm is one recomp_algorithm setting.
type Algorithm struct {
	Priority   int // 1..3
	Name       string
	Params     zcomp.Params
	ParamsText string // "level=N dict=PATH" as written, for display
}

// ParseAlgorithm reads zram's recomp_algorithm syntax, with the backend's
// parameters allowed alongside (zram takes those through algorithm_params):
//
//	algo=NAME [priority=N] [level=N] [dict=PATH]
//
// priority defaults to 1, as in zram. dict= is read here.
func ParseAlgorithm(s string) (Algorithm, error) {
	var a Algorithm
	kv, err := fields("recomp_algorithm", s, "algo", "priority", "level", "dict")
	if err != nil {
		return a, err
	}
	a.Name = kv["algo"]
	if a.Name == "" {
		return a, fmt.Errorf("recomp_algorithm %q: algo= is required, like \"algo=zstd priority=1\"", s)
	}
	if _, err := zcomp.Lookup(a.Name); err != nil {
		return a, fmt.Errorf("recomp_algorithm: %w", err)
	}
	a.Priority = 1
	if v, ok := kv["priority"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > streams.MaxPriority {
			return a, fmt.Errorf("recomp_algorithm: priority %q: want 1..%d", v, streams.MaxPriority)
		}
		a.Priority = n
	}
	var params []string
	for _, k := range []string{"level", "dict"} {
		if v, ok := kv[k]; ok {
			params = append(params, k+"="+v)
		}
	}
	a.ParamsText = strings.Join(params, " ")
	if a.Params, err = zcomp.ParseParams(a.ParamsText); err != nil {
		return a, fmt.Errorf("recomp_algorithm: %w", err)
	}
	if err := zcomp.ValidateLevel(a.Name, a.Params.Level); err != nil {
		return a, fmt.Errorf("recomp_algorithm: %w", err)
	}
	return a, nil
}

// Apply installs the algorithm on d.
func (a Algorithm) Apply(d *blockdev.Device) error {
	if err := d.SetRecompAlgorithm(a.Priority, a.Name, a.Params, a.ParamsText); err != nil {
		return fmt.Errorf("recomp_algorithm: %w", err)
	}
	return nil
}

// fields is keyval.Parse with what and s in its errors.
func fields(what, s string, known ...string) (map[string]string, error) {
	kv, err := keyval.Parse(s, known...)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", what, s, err)
	}
	return kv, nil
}
