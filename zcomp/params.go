package zcomp

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ParseParams parses the backend part of zram's algorithm_params syntax:
// space-separated key=value pairs, with keys
//
//	level=N     the backend's compression level (validated by the backend)
//	dict=PATH   a preset dictionary, read from the file at PATH
//
// Device-level keys such as zram's priority= and algo= are the caller's to
// strip before calling. An empty string gives the zero Params (defaults).
// Each key may appear once; unknown keys and malformed values are errors.
func ParseParams(s string) (Params, error) {
	var p Params
	seen := map[string]bool{}
	for _, field := range strings.Fields(s) {
		key, val, ok := strings.Cut(field, "=")
		if !ok {
			return Params{}, fmt.Errorf("zcomp: params: %q is not key=value", field)
		}
		if seen[key] {
			return Params{}, fmt.Errorf("zcomp: params: %s given twice", key)
		}
		seen[key] = true
		if val == "" {
			return Params{}, fmt.Errorf("zcomp: params: %s has an empty value", key)
		}
		switch key {
		case "level":
			n, err := strconv.Atoi(val)
			if err != nil {
				return Params{}, fmt.Errorf("zcomp: params: level %q is not an integer", val)
			}
			p.Level = n
		case "dict":
			d, err := os.ReadFile(val)
			if err != nil {
				return Params{}, fmt.Errorf("zcomp: params: dict: %w", err)
			}
			if len(d) == 0 {
				return Params{}, fmt.Errorf("zcomp: params: dict: %s is empty", val)
			}
			p.Dict = d
		default:
			return Params{}, fmt.Errorf("zcomp: params: unknown key %q (known: level, dict)", key)
		}
	}
	return p, nil
}
