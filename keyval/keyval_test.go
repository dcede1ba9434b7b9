package keyval

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	got, err := Parse(" algo=zstd\tpriority=1  ", "algo", "priority", "level")
	if err != nil || len(got) != 2 || got["algo"] != "zstd" || got["priority"] != "1" {
		t.Fatalf("Parse = %v, %v", got, err)
	}
	if got, err := Parse("", "algo"); err != nil || len(got) != 0 {
		t.Fatalf("Parse(\"\") = %v, %v", got, err)
	}
	for _, tc := range []struct{ in, msg string }{
		{"algo", `"algo" is not key=value`},
		{"algo=", "algo has an empty value"},
		{"algo==", ""}, // a value of "=" is a value
		{"speed=1", `unknown key "speed" (known: algo, level)`},
		{"level=1 level=2", "level given twice"},
	} {
		_, err := Parse(tc.in, "algo", "level")
		if tc.msg == "" {
			if err != nil {
				t.Errorf("Parse(%q): %v", tc.in, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.in, err, tc.msg)
		}
	}
}
