package zcomp

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseParams(t *testing.T) {
	dir := t.TempDir()
	dictPath := filepath.Join(dir, "dict")
	dictData := []byte("dictionary content")
	if err := os.WriteFile(dictPath, dictData, 0o644); err != nil {
		t.Fatal(err)
	}
	emptyPath := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	good := []struct {
		in    string
		level int
		dict  bool
	}{
		{"", 0, false},
		{"   \n", 0, false},
		{"level=3", 3, false},
		{"level=-1", -1, false}, // parsed; the backend judges the range
		{"dict=" + dictPath, 0, true},
		{"level=9 dict=" + dictPath + "\n", 9, true},
		{"\tdict=" + dictPath + "   level=12", 12, true},
	}
	for _, tc := range good {
		p, err := ParseParams(tc.in)
		if err != nil {
			t.Errorf("ParseParams(%q): %v", tc.in, err)
			continue
		}
		if p.Level != tc.level || (p.Dict != nil) != tc.dict {
			t.Errorf("ParseParams(%q) = level %d dict %v", tc.in, p.Level, p.Dict != nil)
		}
		if tc.dict && !bytes.Equal(p.Dict, dictData) {
			t.Errorf("ParseParams(%q): dict content %q", tc.in, p.Dict)
		}
	}

	bad := []struct{ in, errHas string }{
		{"level", "not key=value"},
		{"level=", "empty value"},
		{"level=fast", `level "fast" is not an integer`},
		{"level=1.5", "not an integer"},
		{"level=99999999999999999999", "not an integer"},
		{"level=1 level=2", "level given twice"},
		{"priority=1", `unknown key "priority"`},
		{"algo=zstd level=3", `unknown key "algo"`},
		{"dict=" + filepath.Join(dir, "missing"), "no such file"},
		{"dict=" + emptyPath, "is empty"},
		{"dict=" + dir, "dict:"},
	}
	for _, tc := range bad {
		_, err := ParseParams(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.errHas) || !strings.HasPrefix(err.Error(), "zcomp: params: ") {
			t.Errorf("ParseParams(%q) = %v, want an error containing %q", tc.in, err, tc.errHas)
		}
	}
}

// TestParamsToContext is the path a "tune" request takes: parse, then build.
func TestParamsToContext(t *testing.T) {
	p, err := ParseParams("level=30")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Lookup("zstd")
	if _, err := b.NewContext(p); err == nil || !strings.Contains(err.Error(), "zcomp: zstd: level 30 out of range: want 1..22") {
		t.Fatalf("zstd level=30: %v", err)
	}
}
