package knob

import (
	"slices"
	"strings"
	"testing"
)

// Every knob is complete, found by its name, and spelled for the CLI.
func TestTable(t *testing.T) {
	names := Names()
	for _, k := range All {
		if k.Set == nil || k.Usage == "" {
			t.Errorf("%s: no Set or no Usage", k.Name)
		}
		if got, ok := Lookup(k.Name); !ok || got.Name != k.Name {
			t.Errorf("Lookup(%s) = %v, %v", k.Name, got.Name, ok)
		}
		if strings.Contains(k.Command(), "_") || !slices.Contains(names, k.Name) {
			t.Errorf("%s: command %q, names %v", k.Name, k.Command(), names)
		}
	}
	if _, ok := Lookup("frobnicate"); ok {
		t.Error("Lookup found frobnicate")
	}
	if v, err := All[0].ValueOf([]string{"1G"}); err != nil || v != "1G" {
		t.Errorf("mem_limit value = %q, %v", v, err)
	}
	k, _ := Lookup("recompress")
	if v, err := k.ValueOf([]string{"type=idle", "max_pages=3"}); err != nil || v != "type=idle max_pages=3" {
		t.Errorf("recompress value = %q, %v", v, err)
	}
}
