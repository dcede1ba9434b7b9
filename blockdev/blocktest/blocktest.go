// Package blocktest holds what the device's tests and its transports' tests
// share: the kinds of page data a swap device sees.
package blocktest

import "math/rand/v2"

// The data kinds Fill writes.
const (
	Zeros      = iota // zero pages: same-filled, the commonest swap page
	SameFilled        // one non-zero 8-byte word repeated
	Random            // incompressible: stored raw (huge)
	Text              // compressible text-like runs
	Kinds             // how many kinds there are
)

// Fill writes data of the given kind into p.
func Fill(r *rand.Rand, p []byte, kind int) {
	switch kind {
	case Zeros:
		clear(p)
	case SameFilled:
		w := r.Uint64()
		for i := 0; i+8 <= len(p); i += 8 {
			for j := 0; j < 8; j++ {
				p[i+j] = byte(w >> (8 * j))
			}
		}
	case Random:
		for i := range p {
			p[i] = byte(r.Uint32())
		}
	default:
		for i := range p {
			p[i] = "uzram compresses pages "[(i/3+int(r.Uint32()%3))%23]
		}
	}
}
