package zcomp

import (
	"encoding/binary"
	"math/bits"
)

// lz4page.go is uzram's own LZ4 block encoder, specialised for what the
// device compresses: one page, and never more than 64 KiB at a time.
//
// It is LZ4_compress_fast's algorithm (lz4.c, the byU16 table mode the
// kernel's LZ4 uses for inputs under 64 KiB), written for Go:
//
//   - One hash table of lz4PageTableSize uint16 positions (8 KiB). A 16-bit
//     position is an absolute offset into src, which is why inputs are capped
//     at 64 KiB: every position and every offset fits, and a candidate is
//     always behind the cursor and within the 64 KiB window, so the only
//     check a candidate needs is that its 4 bytes match.
//   - The table is zeroed at the start of each call (a memclr of 8 KiB,
//     about 150 ns here), so the output depends on the input and
//     acceleration only, never on the pages the context compressed before.
//     With a dictionary (lz4dict.go) it is instead restored to the state
//     the dictionary left it in, and the input follows the dictionary in
//     one window: encode's start.
//   - Greedy parsing, as LZ4: hash 4 bytes, look up one candidate, extend a
//     match forwards 8 bytes at a time and backwards over pending literals.
//     After a match, the positions at its end-2 and end are hashed and the
//     end is tried at once, which chains runs of matches without literals.
//   - Skip acceleration: the step between probes is acceleration +
//     misses/64, so an incompressible page is scanned in about 660 probes
//     instead of 4,084, and rejected.
//   - Bounded output: every write is checked against len(dst) before it is
//     made, and the first one that would not fit returns ErrNoSpace. Nothing
//     is ever written past len(dst); short literal runs are copied 16 bytes
//     at a time when dst has that room, the extra bytes being overwritten
//     by what follows or left past the block's end.
//
// The output is the plain LZ4 block format (lz4_Block_format.md), with its
// end-of-block rules: a match is at least 4 bytes, starts at least 12 bytes
// (MFLIMIT) before the end of the input and ends at least 5 bytes
// (LASTLITERALS) before it, so the last sequence is 5 or more literals and an
// input shorter than 13 bytes is all literals. Any LZ4 decoder reads it:
// pierrec's, the kernel's and liblz4's. It is not byte for byte the kernel's
// output: the kernel's byU16 table has 8192 entries.
//
// Choices measured on 4 KiB pages of machine code and Go source: 2^11
// entries lose 0.3% of ratio, 2^13 gain 0.3%, neither changes the speed of
// compressible pages and the table is zeroed per call, so 2^12. Hashing 5
// bytes (as lz4.c does with 32-bit positions) lost ratio and no time. The
// probe loop is a function of its own (find) because, inlined, it shared
// registers with the sequence writer and reloaded spills on every probe:
// ~6% of the total. Unchecked (unsafe) loads gained ~3% and were left out.
const (
	lz4PageHashLog   = 12
	lz4PageTableSize = 1 << lz4PageHashLog

	// lz4PageMaxInput is the largest input: positions 0..65535 fit uint16.
	lz4PageMaxInput = 1 << 16

	lz4MinMatch     = 4
	lz4LastLiterals = 5  // the last 5 bytes are always literals
	lz4MFLimit      = 12 // a match starts at least 12 bytes before the end
	lz4MinInput     = lz4MFLimit + 1
	lz4RunMask      = 15 // a token nibble of 15 means "more length bytes follow"
	lz4SkipTrigger  = 6  // the step grows by one every 2^6 probes without a match
)

// lz4PageEncoder holds the hash table; its zero value is ready to use.
type lz4PageEncoder struct {
	table [lz4PageTableSize]uint16
}

// lz4PageHash hashes the 4 bytes of u (Knuth's multiplicative hash, as
// LZ4_hash4) into a table index; the shift keeps it < lz4PageTableSize, which
// the compiler sees, so table lookups need no bounds check.
func lz4PageHash(u uint32) uint32 {
	return (u * 2654435761) >> (32 - lz4PageHashLog)
}

func load32(b []byte, i int) uint32 { return binary.LittleEndian.Uint32(b[i : i+4]) }
func load64(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i : i+8]) }

// lz4LenBytes is how many extra length bytes a token nibble needs for n
// (a literal length, or a match length minus 4).
func lz4LenBytes(n int) int {
	if n < lz4RunMask {
		return 0
	}
	return (n-lz4RunMask)/255 + 1
}

// putLen writes the extra length bytes of n (>= 15) at dst[di:] and returns
// the new di. The caller has checked that lz4LenBytes(n) bytes fit.
func putLen(dst []byte, di, n int) int {
	for n -= lz4RunMask; n >= 255; n -= 255 {
		dst[di] = 255
		di++
	}
	dst[di] = byte(n)
	return di + 1
}

// compress writes src as one LZ4 block into dst and returns its length, or
// ErrNoSpace as soon as the block would not fit in len(dst). accel >= 1 is
// LZ4_compress_fast's acceleration: the initial step between probes. src
// must be at most lz4PageMaxInput bytes.
func (e *lz4PageEncoder) compress(dst, src []byte, accel int) (int, error) {
	clear(e.table[:]) // memclr's vector loop: ~150 ns, where e.table = ... is a slower rep stosq
	return e.encode(dst, src, 0, accel)
}

// encode writes win[start:] as one LZ4 block into dst. win[:start] is a
// dictionary whose positions the caller has put in the table; matches may
// reach back into it. Positions are uint16, so len(win) is at most
// lz4PageMaxInput and every offset is within the 64 KiB window.
func (e *lz4PageEncoder) encode(dst, win []byte, start, accel int) (int, error) {
	n := len(win)
	di, anchor := 0, start
	if n-start >= lz4MinInput {
		di, anchor = e.sequences(dst, win, start, accel)
		if di < 0 {
			return 0, ErrNoSpace
		}
	}
	// The last sequence: literals only.
	lit := n - anchor
	need := 1 + lz4LenBytes(lit) + lit
	if need > len(dst)-di {
		return 0, ErrNoSpace
	}
	if lit < lz4RunMask {
		dst[di] = byte(lit << 4)
		di++
	} else {
		dst[di] = lz4RunMask << 4
		di = putLen(dst, di+1, lit)
	}
	di += copy(dst[di:], win[anchor:])
	return di, nil
}

// sequences encodes every sequence of src[start:] but the last into dst and
// returns the output length and the start of the literals left for the last
// sequence; di is -1 when the output does not fit in len(dst). len(src) is
// at most lz4PageMaxInput and len(src)-start at least lz4MinInput.
//
// It stays one long function on purpose: it is the encoder's hot loop
// (probe, extend, emit, for every sequence of every page), and helpers
// split out of it would be calls on that path unless the compiler inlined
// them, which its inlining budget does not promise for bodies this size.
func (e *lz4PageEncoder) sequences(dst, src []byte, start, accel int) (di, anchor int) {
	t := &e.table
	n := len(src)
	// A probe at p reads src[p:p+4]; a match may start at p <= mfLimit and
	// extend up to matchLimit (exclusive).
	mfLimit := n - lz4MFLimit
	matchLimit := n - lz4LastLiterals

	// Without a dictionary position 0 is in the table already (zeroed), so
	// probing starts at 1; with one, at the input's first byte.
	ip, anchor := max(start, 1), start
	for {
		var ref int
		if ip, ref = e.find(src, ip, accel); ip < 0 {
			return di, anchor
		}
		// Extend backwards over the pending literals.
		for ip > anchor && ref > 0 && src[ip-1] == src[ref-1] {
			ip--
			ref--
		}

		// Literal length, the literals, and room for the offset.
		lit := ip - anchor
		need := 1 + lz4LenBytes(lit) + lit + 2
		if need > len(dst)-di {
			return -1, 0
		}
		tok, tokV := di, byte(lz4RunMask<<4)
		if lit < lz4RunMask {
			tokV = byte(lit << 4)
			di++
			if len(dst)-di >= 16 && len(src)-anchor >= 16 {
				// Short literals: copy 16 bytes, the ones past lit being
				// overwritten by what follows or left past the block's end,
				// within len(dst) either way.
				binary.LittleEndian.PutUint64(dst[di:], load64(src, anchor))
				binary.LittleEndian.PutUint64(dst[di+8:], load64(src, anchor+8))
				di += lit
			} else {
				di += copy(dst[di:di+lit], src[anchor:ip])
			}
		} else {
			di = putLen(dst, di+1, lit)
			di += copy(dst[di:di+lit], src[anchor:ip])
		}

		for {
			// The match: offset, then its length beyond the 4 bytes found.
			off := ip - ref
			dst[di] = byte(off)
			dst[di+1] = byte(off >> 8)
			di += 2
			ip += lz4MinMatch
			for ip+8 <= matchLimit {
				if x := load64(src, ip) ^ load64(src, ip-off); x != 0 {
					ip += bits.TrailingZeros64(x) >> 3
					goto counted
				}
				ip += 8
			}
			for ip < matchLimit && src[ip] == src[ip-off] {
				ip++
			}
		counted:
			if ml := ip - anchor - lit - lz4MinMatch; ml < lz4RunMask {
				dst[tok] = tokV | byte(ml)
			} else {
				if lz4LenBytes(ml) > len(dst)-di {
					return -1, 0
				}
				dst[tok] = tokV | lz4RunMask
				di = putLen(dst, di, ml)
			}
			anchor, lit = ip, 0
			if ip > mfLimit {
				return di, anchor
			}
			// Index end-2, then try end at once: a match right after a
			// match is a sequence with no literals.
			t[lz4PageHash(load32(src, ip-2))] = uint16(ip - 2)
			v := load32(src, ip)
			h := lz4PageHash(v)
			ref = int(t[h])
			t[h] = uint16(ip)
			if load32(src, ref) != v {
				break
			}
			if 3 > len(dst)-di {
				return -1, 0
			}
			tok, tokV = di, 0
			di++
		}
		ip++
	}
}

// find looks for a match from ip on: it probes ip, ip+step, ... with a step
// that grows with the misses (skip acceleration), indexing every position
// it probes, until one has the same 4 bytes as the position the table holds
// for them. It returns both positions, or -1 if the search reaches the last
// position a match may start at (len(src)-12). It is a function of its own
// so that this loop, where the time goes, has the registers to itself.
//
//go:noinline
func (e *lz4PageEncoder) find(src []byte, ip, accel int) (int, int) {
	t := &e.table
	last := len(src) - lz4MFLimit
	fwd := ip
	fwdV := load32(src, fwd)
	step := 1
	probes := accel << lz4SkipTrigger
	for {
		v := fwdV
		h := lz4PageHash(v)
		ip = fwd
		fwd += step
		step = probes >> lz4SkipTrigger
		probes++
		if fwd > last+1 {
			return -1, 0
		}
		ref := int(t[h])
		t[h] = uint16(ip)
		fwdV = load32(src, fwd)
		if load32(src, ref) == v {
			return ip, ref
		}
	}
}
