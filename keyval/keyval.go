// Package keyval reads zram's attribute syntax: space-separated key=value
// pairs, as written to algorithm_params, recomp_algorithm and recompress
// ("algo=zstd priority=1 level=9").
package keyval

import (
	"fmt"
	"slices"
	"strings"
)

// Parse splits s into its pairs. Every key must be one of known and appear
// once, and every value must be non-empty: zram ignores unknown keys, so a
// typo there silently changes what runs. Errors name the offending field and
// leave the caller to say what s was.
func Parse(s string, known ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		switch {
		case !ok:
			return nil, fmt.Errorf("%q is not key=value", f)
		case v == "":
			return nil, fmt.Errorf("%q is not key=value: %s has an empty value", f, k)
		case !slices.Contains(known, k):
			return nil, fmt.Errorf("unknown key %q (known: %s)", k, strings.Join(known, ", "))
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s given twice", k)
		}
		out[k] = v
	}
	return out, nil
}
