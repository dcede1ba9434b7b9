// Package zcomp holds uzram's compression backends behind one small interface,
// in the shape of the kernel's zcomp split (drivers/block/zram/zcomp.h):
//
//   - Params: what a backend is configured with (level, dictionary). Immutable
//     once built and shared by every context of that backend.
//   - Context: a backend's mutable scratch state. Never shared: one per stream.
//     streams/ owns the locking and lifetime of contexts.
//
// The hot path allocates nothing: the caller owns every buffer. Compress
// writes into dst and fails with ErrNoSpace when the result would not fit in
// len(dst); the block device passes a dst sized to its huge threshold, so an
// incompressible page costs one failed attempt and is then stored raw.
package zcomp

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// PageSize is the unit every backend compresses: one 4 KiB page.
const PageSize = 4096

// ErrNoSpace means the compressed result does not fit in the destination.
// It is not a failure: the caller stores the page uncompressed.
var ErrNoSpace = errors.New("zcomp: compressed data does not fit")

// ErrCorrupt means the source is not valid compressed data for the backend.
var ErrCorrupt = errors.New("zcomp: corrupt compressed data")

// Params configure a backend. The zero value means the backend's defaults.
type Params struct {
	// Level is the backend's compression level; 0 selects its default.
	Level int
	// Dict is a preset dictionary (zstd, lz4 and deflate use it); nil for none.
	// The backend keeps a reference: the caller must not modify it afterwards.
	Dict []byte
}

// Context is one stream's compression state. A Context is not safe for
// concurrent use; callers serialise access (streams/ holds a mutex per stream).
type Context interface {
	// Compress compresses src into dst and returns the number of bytes written.
	// It returns ErrNoSpace if the result would exceed len(dst).
	Compress(dst, src []byte) (int, error)
	// Decompress decompresses src into dst, which must be large enough for the
	// original data, and returns the number of bytes written.
	Decompress(dst, src []byte) (int, error)
	// Close releases the context's resources. The context is unusable after.
	Close()
}

// Backend is one algorithm: a named factory of contexts.
type Backend interface {
	// Name is the zram name of the algorithm (lz4, lz4hc, zstd, deflate...).
	Name() string
	// NewContext builds a context configured with p. It validates p and
	// returns a descriptive error for a bad level or dictionary.
	NewContext(p Params) (Context, error)
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Backend{}
)

// Register adds a backend under its name. Backends register in init.
func Register(b Backend) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[b.Name()]; dup {
		panic("zcomp: backend registered twice: " + b.Name())
	}
	registry[b.Name()] = b
}

// Lookup returns the backend with the given zram name.
func Lookup(name string) (Backend, error) {
	registryMu.RLock()
	b, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("zcomp: unknown algorithm %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	return b, nil
}

// Names lists the registered algorithms, sorted.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Default is the algorithm a device uses when none is named, as zram's lzo-rle
// is for the kernel; lz4 is the fastest of our backends.
const Default = "lz4"
