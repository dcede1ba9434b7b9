package zcomp

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecompress feeds arbitrary bytes to every backend's decoder, with
// and without a dictionary. The contract: no panic, nothing written past
// dst, every error wraps ErrCorrupt, and anything that decodes re-encodes
// and decodes to itself.
// Run it with: go test -fuzz=FuzzDecompress -fuzztime=30s ./zcomp/
func FuzzDecompress(f *testing.F) {
	var names []string
	var ctxs []Context
	dict := readDict(f)
	for _, name := range Names() {
		names = append(names, name, name+"+dict")
		ctxs = append(ctxs, newCtx(f, name, Params{}), newCtx(f, name, Params{Dict: dict}))
	}
	// Seeds: real compressed pages for each backend (so the fuzzer starts
	// from valid streams and mutates them), plus plain garbage.
	for i, c := range ctxs {
		for _, pk := range testPages(f) {
			comp := make([]byte, 2*PageSize)
			n, err := c.Compress(comp, pk.data)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(i), comp[:n])
		}
		f.Add(uint8(i), []byte{})
		f.Add(uint8(i), []byte("\xff\xff\xff\xff not compressed at all"))
	}
	f.Fuzz(func(t *testing.T, alg uint8, src []byte) {
		c := ctxs[int(alg)%len(ctxs)]
		dst, ok := canaryDst(PageSize)
		n, err := c.Decompress(dst, src)
		if !ok() {
			t.Fatalf("%s: wrote past dst", names[int(alg)%len(names)])
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || n != 0 {
				t.Fatalf("%s: n=%d err=%v, want 0 and ErrCorrupt", names[int(alg)%len(names)], n, err)
			}
			return
		}
		if n > PageSize {
			t.Fatalf("n=%d > len(dst)", n)
		}
		comp := make([]byte, 2*PageSize)
		m, err := c.Compress(comp, dst[:n])
		if err != nil {
			t.Fatalf("re-encoding %d decoded bytes: %v", n, err)
		}
		back := make([]byte, PageSize)
		k, err := c.Decompress(back, comp[:m])
		if err != nil || !bytes.Equal(back[:k], dst[:n]) {
			t.Fatalf("decoded data does not round-trip: %v", err)
		}
	})
}
