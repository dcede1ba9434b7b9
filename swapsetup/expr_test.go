package swapsetup

import (
	"math"
	"strings"
	"testing"
)

func TestEvalSize(t *testing.T) {
	const ram = 8000
	for _, tc := range []struct {
		expr string
		want float64
	}{
		{"4096", 4096},
		{"ram", ram},
		{"ram / 2", 4000},
		{"min(ram / 2, 4096)", 4000},
		{"min(ram/2,2048)", 2048},
		{"max(ram / 4, 512)", 2000},
		{"max(1, 2, 3)", 3},
		{"min(5)", 5},
		{"1 + 2 * 3", 7},
		{"(1 + 2) * 3", 9},
		{"10 - 2 - 3", 5}, // left-associative
		{"64 / 4 / 2", 8},
		{"-2 + 10", 8},
		{"--4", 4},
		{"ram * 0.25", 2000},
		{" RAM / 2 ", 4000},
		{"min(max(ram / 8, 256), 1024 * 2)", 1000},
		{"1.5", 1.5},
		{".5", 0.5},
	} {
		got, err := EvalSize(tc.expr, ram)
		if err != nil {
			t.Errorf("EvalSize(%q): %v", tc.expr, err)
			continue
		}
		if math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("EvalSize(%q) = %g, want %g", tc.expr, got, tc.want)
		}
	}
}

func TestEvalSizeErrors(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{"", "ends too early"},
		{"ram /", "ends too early"},
		{"ram / 0", "division by zero"},
		{"ram / (2 - 2)", "division by zero"},
		{"swap", `unknown name "swap"`},
		{"os.exit(1)", `unknown name "os"`},
		{"min 4", "want '(' after min"},
		{"min(1, 2", "want ',' or ')'"},
		{"min()", "unexpected \")\""},
		{"(1 + 2", "want ')'"},
		{"1 2", `unexpected "2"`},
		{"4G", `sizes are in MiB without a unit`},
		{"1..2", "bad number"},
		{"ram; rm -rf /", `unexpected ";`},
		{"$(reboot)", `unexpected "$"`},
		{strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100), "nested too deeply"},
		{strings.Repeat("-", 100) + "1", "nested too deeply"},
		{strings.Repeat("1+", 600) + "1", "too long"},
	} {
		_, err := EvalSize(tc.expr, 1024)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("EvalSize(%q) = %v, want an error containing %q", tc.expr, err, tc.want)
		}
	}
}

func TestEvalSizeInfinite(t *testing.T) {
	if _, err := EvalSize("ram * 1"+strings.Repeat("0", 400), 1024); err == nil {
		t.Fatal("an infinite size was accepted")
	}
}
