package tests

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// dictData is a dictionary file and data that resembles it without
// repeating it: the dictionary is the start of net/http's server.go, the
// data the rest of that file and its siblings, whole pages.
func dictData(t *testing.T, size int) (dictPath string, data []byte) {
	t.Helper()
	dir := filepath.Join(runtime.GOROOT(), "src", "net", "http")
	first, err := os.ReadFile(filepath.Join(dir, "server.go"))
	if err != nil || len(first) < 64<<10 {
		t.Skipf("need net/http/server.go from GOROOT: %v", err)
	}
	const dictSize = 32 << 10
	dictPath = filepath.Join(t.TempDir(), "lz4.dict")
	if err := os.WriteFile(dictPath, first[:dictSize], 0o600); err != nil {
		t.Fatal(err)
	}
	data = append(data, first[dictSize:]...)
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range files {
		if len(data) >= size {
			break
		}
		if b, err := os.ReadFile(f); err == nil && !strings.HasSuffix(f, "/server.go") {
			data = append(data, b...)
		}
	}
	if len(data) < size {
		t.Skipf("only %d bytes of Go source", len(data))
	}
	return dictPath, data[:size]
}

// writeVerify writes data at 0 through NBD and reads it back.
func writeVerify(t *testing.T, s *server, data []byte) {
	t.Helper()
	c := dial(t, s)
	if err := c.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	readVerify(t, s, data)
}

func readVerify(t *testing.T, s *server, data []byte) {
	t.Helper()
	c := dial(t, s)
	got := make([]byte, len(data))
	if err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data read back through NBD differs from what was written")
	}
}

// TestLZ4DictionaryCLI: lz4 and lz4hc dictionaries through the public
// surfaces. A device whose primary is lz4 with dict= (serve
// --algorithm-params) stores the same pages smaller than plain lz4, and
// reads them back; `uzram recomp-algorithm ... algo=lz4hc dict=PATH` then
// recompresses them smaller still; on a plain lz4 device, `algo=lz4
// dict=PATH` as the recompression algorithm shrinks them too. Every byte
// reads back through NBD after each step, and missing or empty dictionary
// files are refused with the reason.
func TestLZ4DictionaryCLI(t *testing.T) {
	const size = 1 << 20
	dict, data := dictData(t, size)

	plain := startServer(t, "--size", "4M", "--algorithm", "lz4")
	writeVerify(t, plain, data)
	plainMM, _ := plain.stats(t)

	withDict := startServer(t, "--size", "4M", "--algorithm", "lz4", "--algorithm-params", "dict="+dict)
	writeVerify(t, withDict, data)
	dictMM, _ := withDict.stats(t)
	t.Logf("compr_data_size: lz4 %d, lz4 with a dictionary %d", plainMM[1], dictMM[1])
	if dictMM[0] != plainMM[0] || dictMM[1] >= plainMM[1]*97/100 {
		t.Fatalf("lz4 with a dictionary: mm_stat %v, without %v: want 3%% smaller", dictMM, plainMM)
	}

	// lz4hc with the dictionary as priority 1 on the dictionary device.
	cliOK(t, withDict, "recomp-algorithm", withDict.Name, "algo=lz4hc level=9 dict="+dict+" priority=1")
	cliOK(t, withDict, "idle", withDict.Name, "all")
	cliOK(t, withDict, "recompress", withDict.Name, "type=idle")
	hcMM, _ := withDict.stats(t)
	t.Logf("compr_data_size: after lz4hc with the dictionary %d", hcMM[1])
	if hcMM[0] != dictMM[0] || hcMM[1] >= dictMM[1]*95/100 {
		t.Fatalf("recompressing with lz4hc and the dictionary: mm_stat %v -> %v: want 5%% smaller", dictMM, hcMM)
	}
	readVerify(t, withDict, data)

	// lz4 with the dictionary as priority 1 on the plain device.
	cliOK(t, plain, "recomp-algorithm", plain.Name, "algo=lz4 dict="+dict+" priority=1")
	cliOK(t, plain, "idle", plain.Name, "all")
	cliOK(t, plain, "recompress", plain.Name, "type=idle")
	recompMM, _ := plain.stats(t)
	t.Logf("compr_data_size: lz4 recompressed with lz4 and the dictionary %d", recompMM[1])
	if recompMM[0] != plainMM[0] || recompMM[1] >= plainMM[1]*95/100 {
		t.Fatalf("recompressing with lz4 and the dictionary: mm_stat %v -> %v: want 5%% smaller", plainMM, recompMM)
	}
	readVerify(t, plain, data)

	// Bad dictionary files: the reason, whichever lz4 it is for.
	empty := filepath.Join(t.TempDir(), "empty.dict")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ spec, want string }{
		{"algo=lz4 dict=" + filepath.Join(t.TempDir(), "missing") + " priority=2", "no such file"},
		{"algo=lz4hc dict=" + empty + " priority=2", "is empty"},
	} {
		out, errOut, code := cli(t, plain, "recomp-algorithm", plain.Name, tc.spec)
		if code == 0 || !strings.Contains(errOut, "dict") || !strings.Contains(errOut, tc.want) {
			t.Errorf("recomp-algorithm %q: exit %d, %q %q; want an error naming %q", tc.spec, code, out, errOut, tc.want)
		}
	}
	out, errOut, code := cli(t, plain, "algorithm-params", plain.Name, "priority=1 dict="+empty)
	if code == 0 || !strings.Contains(errOut, "is empty") {
		t.Errorf("algorithm-params with an empty dictionary: exit %d, %q %q", code, out, errOut)
	}
	// algorithm_params gives the lz4 at priority 1 a new dictionary: new
	// pages use it, stored pages still decode with the one that wrote them.
	cliOK(t, plain, "algorithm-params", plain.Name, "priority=1 level=2 dict="+dict)
	readVerify(t, plain, data)
}
