package zcomp

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/pierrec/lz4/v4"
)

// lz4dict.go is LZ4 compression with a preset dictionary, for lz4 and lz4hc,
// as zram's backends do it (LZ4_loadDict then LZ4_compress_fast_continue,
// LZ4_loadDictHC then LZ4_compress_HC_continue): the dictionary sits right
// before the input, and a match may reach back into it. The block format
// does not change; a decoder needs the same dictionary
// (LZ4_decompress_safe_usingDict, pierrec's UncompressBlockWithDict).
//
// Both encoders work on a window: the dictionary's tail, then the page
// copied after it, with uint16 positions as lz4page.go's. So window plus
// page fit in 64 KiB, and what counts of a dictionary is its last
// lz4DictMax bytes (60 KiB), not LZ4's 64: the first 4 KiB of a 64 KiB
// dictionary are lost to the first bytes of a page, in exchange for the page
// encoder's tables, checks and speed unchanged. The dictionary's positions
// are hashed once, when the context is built; a page restores that state
// (an 8 KiB copy for lz4, 128 KiB for lz4hc) where it would clear it.
//
// Inputs over a page (never from the device) are compressed without the
// dictionary, by the plain encoders: such a block decodes the same with or
// without it.

// lz4DictMax is how much of a dictionary's end is used: what leaves room for
// a page in a 64 KiB window of uint16 positions.
const lz4DictMax = lz4PageMaxInput - PageSize

// lz4DictWindow returns the dictionary's last lz4DictMax bytes at the start
// of a window with room for one page after them.
func lz4DictWindow(dict []byte) (win []byte, d int) {
	tail := dict[max(0, len(dict)-lz4DictMax):]
	win = make([]byte, len(tail)+PageSize)
	return win, copy(win, tail)
}

// lz4DictTail is the part of a dictionary the decoder needs: offsets reach
// at most 64 KiB back.
func lz4DictTail(dict []byte) []byte {
	return dict[max(0, len(dict)-lz4PageMaxInput):]
}

// lz4DecompressDict is lz4Decompress against a dictionary. pierrec's
// decoder (assembly on amd64 and arm64) takes the dictionary as a plain
// slice: no allocation.
func lz4DecompressDict(dst, src, dict []byte) (int, error) {
	if len(src) == 0 {
		return 0, fmt.Errorf("%w: lz4: empty input", ErrCorrupt)
	}
	n, err := lz4.UncompressBlockWithDict(src, dst[:len(dst):len(dst)], dict)
	if err != nil {
		return 0, fmt.Errorf("%w: lz4: %v", ErrCorrupt, err)
	}
	return n, nil
}

// lz4DictEncoder is lz4page.go's encoder primed with a dictionary.
type lz4DictEncoder struct {
	enc    lz4PageEncoder
	primed [lz4PageTableSize]uint16 // the table after hashing the dictionary
	win    []byte                   // dictionary tail, then room for a page
	d      int                      // length of the dictionary tail in win
}

func newLZ4DictEncoder(dict []byte) *lz4DictEncoder {
	e := &lz4DictEncoder{}
	e.win, e.d = lz4DictWindow(dict)
	// Every position, oldest first, so a slot keeps the nearest: the
	// shortest offset, and the bytes most likely to match what follows.
	// lz4.c's LZ4_loadDict hashes every third; this runs once a context.
	for p := 0; p+4 <= e.d; p++ {
		e.primed[lz4PageHash(load32(e.win, p))] = uint16(p)
	}
	return e
}

// compress is lz4PageEncoder.compress with the dictionary before src;
// len(src) is at most PageSize.
func (e *lz4DictEncoder) compress(dst, src []byte, accel int) (int, error) {
	win := e.win[:e.d+copy(e.win[e.d:], src)]
	e.enc.table = e.primed
	return e.enc.encode(dst, win, e.d, accel)
}

// lz4HC hash table: 2^16 entries of uint16 positions, as pierrec's and
// lz4hc.c's for 64 KiB inputs.
const (
	lz4HCHashLog     = 16
	lz4HCAdaptSkip   = 7 // without a match the step grows by 1 every 2^7 bytes, as pierrec's
	lz4HCWindowBytes = lz4PageMaxInput
)

func lz4HCHash(u uint32) uint32 { return (u * 2654435761) >> (32 - lz4HCHashLog) }

// lz4HCDictEncoder is LZ4 high compression with a dictionary: pierrec's
// CompressorHC parse (greedy, the longest match among up to depth
// candidates of a hash chain, every position of a match indexed, skipping
// ahead on incompressible data), over a window whose dictionary part was
// indexed once.
//
// dictHead is the hash table after indexing the dictionary, and chain[p]
// the previous position with p's hash; both are built once. A page starts
// from a copy of dictHead (128 KiB, about what pierrec's clear costs), so
// its chains run through its own positions into the dictionary's. The
// dictionary part of chain is never overwritten: page positions all come
// after it. Position 0 ends a chain, so the window's first byte is never a
// candidate. Measured interleaved on text pages with a 16 KiB dictionary,
// it takes 1.1x (level 1) and 1.6x (level 9) the time pierrec's takes
// without one: the dictionary makes the chains longer.
type lz4HCDictEncoder struct {
	head     [1 << lz4HCHashLog]uint16 // newest position per hash
	dictHead [1 << lz4HCHashLog]uint16
	chain    [lz4HCWindowBytes]uint16
	win      []byte
	d        int
	depth    int
}

func newLZ4HCDictEncoder(dict []byte, depth int) *lz4HCDictEncoder {
	e := &lz4HCDictEncoder{depth: depth}
	e.win, e.d = lz4DictWindow(dict)
	for p := 1; p+4 <= e.d; p++ {
		h := lz4HCHash(load32(e.win, p))
		e.chain[p] = e.dictHead[h]
		e.dictHead[h] = uint16(p)
	}
	return e
}

// insert indexes position p of win.
func (e *lz4HCDictEncoder) insert(win []byte, p int) {
	h := lz4HCHash(load32(win, p))
	e.chain[p] = e.head[h]
	e.head[h] = uint16(p)
}

// compress writes the dictionary-primed LZ4 block of src (at most PageSize
// bytes) into dst, or returns ErrNoSpace.
func (e *lz4HCDictEncoder) compress(dst, src []byte) (int, error) {
	win := e.win[:e.d+copy(e.win[e.d:], src)]
	e.head = e.dictHead
	n := len(win)
	di, anchor := 0, e.d
	if n-e.d >= lz4MinInput {
		mfLimit := n - lz4MFLimit         // the last position a match may start at
		matchLimit := n - lz4LastLiterals // matches end before it
		for ip := e.d; ip <= mfLimit; {
			ml, ref := e.longest(win, ip, matchLimit)
			e.insert(win, ip)
			if ml == 0 {
				ip += 1 + (ip-anchor)>>lz4HCAdaptSkip
				continue
			}
			for p := ip + 1; p < ip+ml; p++ {
				e.insert(win, p)
			}
			if di = lz4PutSequence(dst, di, win[anchor:ip], ip-ref, ml); di < 0 {
				return 0, ErrNoSpace
			}
			ip += ml
			anchor = ip
		}
	}
	if di = lz4PutSequence(dst, di, win[anchor:], 0, 0); di < 0 {
		return 0, ErrNoSpace
	}
	return di, nil
}

// longest follows ip's hash chain for up to depth candidates and returns
// the longest match of at least 4 bytes ending before limit, the nearest
// among equals, or 0.
func (e *lz4HCDictEncoder) longest(win []byte, ip, limit int) (ml, ref int) {
	cand := int(e.head[lz4HCHash(load32(win, ip))])
	for try := e.depth; try > 0 && cand > 0; try-- {
		// Only a candidate that also matches the byte after the best so
		// far can beat it. ip+ml < limit: the best stops at limit at most,
		// and then the walk has already stopped.
		if win[cand+ml] == win[ip+ml] {
			if l := lz4MatchLen(win, cand, ip, limit); l > ml && l >= lz4MinMatch {
				ml, ref = l, cand
				if ip+ml == limit {
					break
				}
			}
		}
		cand = int(e.chain[cand])
	}
	return ml, ref
}

// lz4MatchLen is how many bytes win[cand:] and win[ip:] share, cand < ip,
// counting no byte at or past limit.
func lz4MatchLen(win []byte, cand, ip, limit int) int {
	l := 0
	for ip+l+8 <= limit {
		if x := load64(win, ip+l) ^ load64(win, cand+l); x != 0 {
			return l + bits.TrailingZeros64(x)>>3
		}
		l += 8
	}
	for ip+l < limit && win[ip+l] == win[cand+l] {
		l++
	}
	return l
}

// lz4PutSequence writes one sequence at dst[di:]: lits, then a match of ml
// bytes at offset off, or no match when ml is 0 (the last sequence). It
// returns the new di, or -1 when the sequence does not fit in len(dst).
func lz4PutSequence(dst []byte, di int, lits []byte, off, ml int) int {
	lit := len(lits)
	need := 1 + lz4LenBytes(lit) + lit
	if ml > 0 {
		need += 2 + lz4LenBytes(ml-lz4MinMatch)
	}
	if need > len(dst)-di {
		return -1
	}
	tok := di
	di++
	if lit < lz4RunMask {
		dst[tok] = byte(lit << 4)
	} else {
		dst[tok] = lz4RunMask << 4
		di = putLen(dst, di, lit)
	}
	di += copy(dst[di:], lits)
	if ml == 0 {
		return di
	}
	binary.LittleEndian.PutUint16(dst[di:], uint16(off))
	di += 2
	if m := ml - lz4MinMatch; m < lz4RunMask {
		dst[tok] |= byte(m)
	} else {
		dst[tok] |= lz4RunMask
		di = putLen(dst, di, m)
	}
	return di
}
