package zcomp

import (
	"fmt"
	"os"
	"strconv"

	"github.com/uzram/uzram/keyval"
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
	kv, err := keyval.Parse(s, "level", "dict")
	if err != nil {
		return Params{}, fmt.Errorf("zcomp: params: %w", err)
	}
	if val, ok := kv["level"]; ok {
		n, err := strconv.Atoi(val)
		if err != nil {
			return Params{}, fmt.Errorf("zcomp: params: level %q is not an integer", val)
		}
		p.Level = n
	}
	if val, ok := kv["dict"]; ok {
		d, err := os.ReadFile(val)
		if err != nil {
			return Params{}, fmt.Errorf("zcomp: params: dict: %w", err)
		}
		if len(d) == 0 {
			return Params{}, fmt.Errorf("zcomp: params: dict: %s is empty", val)
		}
		p.Dict = d
	}
	return p, nil
}
