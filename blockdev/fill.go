package blockdev

import (
	"encoding/binary"
	"unsafe"
)

// sameFilled reports whether every 8-byte word of a page is equal, and the
// word. zram stores such pages as the word alone; zeroed swap pages are the
// common case.
func sameFilled(p []byte) (uint64, bool) {
	if uintptr(unsafe.Pointer(&p[0]))%8 != 0 {
		return sameFilledBytes(p)
	}
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&p[0])), len(p)/8)
	w := words[0]
	// Checking the last word first rejects most pages after two loads.
	if words[len(words)-1] != w {
		return 0, false
	}
	for _, x := range words[1:] {
		if x != w {
			return 0, false
		}
	}
	return binary.LittleEndian.Uint64(p[:8]), true
}

// fillWord writes the 8-byte word w (as stored by sameFilled) over dst.
func fillWord(dst []byte, w uint64) {
	if w == 0 {
		clear(dst)
		return
	}
	binary.LittleEndian.PutUint64(dst[:8], w)
	for n := 8; n < len(dst); n *= 2 {
		copy(dst[n:], dst[:n])
	}
}

// sameFilledBytes is sameFilled for a page that is not 8-byte aligned.
func sameFilledBytes(p []byte) (uint64, bool) {
	w := binary.LittleEndian.Uint64(p)
	for i := 8; i < len(p); i += 8 {
		if binary.LittleEndian.Uint64(p[i:]) != w {
			return 0, false
		}
	}
	return w, true
}
