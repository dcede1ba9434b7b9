package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/uzram/uzram/pagestore"
	"github.com/uzram/uzram/zcomp"
)

const pageSize = 4096

// hugeThreshold is blockdev.HugeThreshold (zram's huge_class_size on 4 KiB
// pages with 8-page zspages): a page that does not compress below it is
// stored raw.
const hugeThreshold = 3632

// analysis is what the corpus holds, compressed in-process with one
// algorithm: no server, no socket, so it shows the data and the store alone.
type analysis struct {
	algo                     string
	pages, same, zero, huge  int
	dupPages, dupBytes       int   // non-same-filled pages that repeat an earlier one, and the store bytes they hold
	dupHuge                  int   // of dupPages, huge ones
	compr                    int64 // compressed bytes (huge pages count 4096)
	sizes                    []int // stored object sizes, one per non-same page
	store                    pagestore.Stats
	zsUsed, zsUsed4          int64 // zsmalloc's pages for the same objects: 8-page chains (Linux 6.3+ default), 4-page (before)
	zsByClass, zsByClass4    map[int]zsClassUse
	zsHugeThreshold, zsHuge4 int
}

// analyze reads the corpus page by page, classifies and compresses every
// page as the device would, stores the objects in a fresh pagestore, and
// computes what zsmalloc would hold for the same objects.
func analyze(path, algo string, params zcomp.Params) (*analysis, error) {
	b, err := zcomp.Lookup(algo)
	if err != nil {
		return nil, err
	}
	ctx, err := b.NewContext(params)
	if err != nil {
		return nil, err
	}
	defer ctx.Close()
	st, err := pagestore.New(pagestore.Options{})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a := &analysis{algo: algo}
	seed := maphash.MakeSeed()
	seen := map[uint64][]int64{} // content hash -> offsets of pages with it
	page := make([]byte, pageSize)
	other := make([]byte, pageSize)
	out := make([]byte, pageSize)
	for off := int64(0); ; off += pageSize {
		if _, err := io.ReadFull(f, page); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
		a.pages++
		if w, ok := sameFilled(page); ok {
			a.same++
			if w == 0 {
				a.zero++
			}
			continue
		}
		n, err := ctx.Compress(out[:hugeThreshold-1], page)
		obj := out[:n]
		if errors.Is(err, zcomp.ErrNoSpace) {
			obj, n = page, pageSize
			a.huge++
		} else if err != nil {
			return nil, err
		}
		h := maphash.Bytes(seed, page)
		dup := false
		for _, o := range seen[h] {
			if _, err := f.ReadAt(other, o); err != nil {
				return nil, err
			}
			if bytes.Equal(other, page) {
				dup = true
				break
			}
		}
		if dup {
			a.dupPages++
			a.dupBytes += n
			if n == pageSize {
				a.dupHuge++
			}
		} else {
			seen[h] = append(seen[h], off)
		}
		a.compr += int64(n)
		a.sizes = append(a.sizes, n)
		if _, err := st.Put(obj); err != nil {
			return nil, err
		}
	}
	a.store = st.Stats()
	a.zsUsed, a.zsByClass, a.zsHugeThreshold = zsmallocUse(a.sizes, 8)
	a.zsUsed4, a.zsByClass4, a.zsHuge4 = zsmallocUse(a.sizes, 4)
	return a, nil
}

// sameFilled is blockdev's test: every 8-byte word equal.
func sameFilled(p []byte) (uint64, bool) {
	w := binary.LittleEndian.Uint64(p)
	for i := 8; i < len(p); i += 8 {
		if binary.LittleEndian.Uint64(p[i:]) != w {
			return 0, false
		}
	}
	return w, true
}

// zsClass is one zsmalloc size class.
type zsClass struct{ size, pages, objs int }

// zsClasses computes zsmalloc's size classes as zs_create_pool does (Linux
// 6.3+, calculate_zspage_chain_size with chain pages at most): 255 sizes from
// 32 in 16-byte steps, each with the chain length that wastes least,
// adjacent sizes with the same geometry merged into the largest. It returns
// the class index of every size index and huge_class_size.
func zsClasses(chain int) (classes []zsClass, bySize []int, hugeSize int) {
	const minSize, delta, maxSize = 32, 16, pageSize
	n := (maxSize-minSize)/delta + 1
	bySize = make([]int, n)
	for i := n - 1; i >= 0; i-- {
		size := min(minSize+i*delta, maxSize)
		pages := 1
		if size&(size-1) != 0 {
			minWaste := 1 << 30
			for p := 1; p <= chain; p++ {
				if w := p * pageSize % size; w < minWaste {
					minWaste, pages = w, p
				}
			}
		}
		objs := pages * pageSize / size
		if pages != 1 && objs != 1 && hugeSize == 0 {
			hugeSize = size - (8 - 1) // ZS_HANDLE_SIZE - 1
		}
		if len(classes) > 0 {
			last := classes[len(classes)-1]
			if last.pages == pages && last.objs == objs {
				bySize[i] = len(classes) - 1
				continue
			}
		}
		classes = append(classes, zsClass{size, pages, objs})
		bySize[i] = len(classes) - 1
	}
	return classes, bySize, hugeSize
}

// zsClassUse is one zsmalloc class's share of a store.
type zsClassUse struct {
	zsClass
	objects  int
	objBytes int64
	used     int64 // bytes of zspages, packed as tightly as the class allows
}

// zsmallocUse is the memory zsmalloc (chain pages at most per zspage) would
// hold for objects of these sizes, packed perfectly (no fragmentation): zram
// asks zs_malloc for the compressed length, and zs_malloc adds its 8-byte
// in-object handle (ZS_HANDLE_SIZE) before picking the class.
func zsmallocUse(sizes []int, chain int) (int64, map[int]zsClassUse, int) {
	classes, bySize, huge := zsClasses(chain)
	use := map[int]zsClassUse{}
	for _, n := range sizes {
		s := n + 8
		if n == pageSize {
			s = pageSize // a huge page: zs_malloc of PAGE_SIZE lands in the last class
		}
		idx := 0
		if s > 32 {
			idx = (s - 32 + 15) / 16
		}
		idx = min(idx, len(bySize)-1)
		c := classes[bySize[idx]]
		u := use[c.size]
		u.zsClass = c
		u.objects++
		u.objBytes += int64(n)
		use[c.size] = u
	}
	var total int64
	for k, u := range use {
		zspages := (u.objects + u.objs - 1) / u.objs
		u.used = int64(zspages * u.pages * pageSize)
		use[k] = u
		total += u.used
	}
	return total, use, huge
}

// writeAnalysis prints one algorithm's analysis as markdown.
func (a *analysis) write(w io.Writer) {
	mib := func(v int64) string { return fmt.Sprintf("%.1f", float64(v)/(1<<20)) }
	stored := a.pages - a.same
	fmt.Fprintf(w, "### %s, in-process (no server): the data and the store alone\n\n", a.algo)
	fmt.Fprintf(w, "- pages %d (%.1f MiB); same-filled %d (zero %d); stored %d, of them huge %d (%.1f%%)\n",
		a.pages, float64(a.pages)/256, a.same, a.zero, stored, a.huge, 100*float64(a.huge)/float64(max(stored, 1)))
	fmt.Fprintf(w, "- exact duplicates among stored pages: %d pages (%.1f%% of stored pages, %d of them huge), holding %s MiB of %s MiB compressed (%.1f%%)\n",
		a.dupPages, 100*float64(a.dupPages)/float64(max(stored, 1)), a.dupHuge, mib(int64(a.dupBytes)), mib(a.compr),
		100*float64(a.dupBytes)/float64(max(a.compr, 1)))
	fmt.Fprintf(w, "- compr %s MiB; uzram store %s MiB (x%.4f) + metadata %s MiB; zsmalloc, packed perfectly: %s MiB with 8-page chains (x%.4f, huge from %d B), %s MiB with 4-page chains (x%.4f, huge from %d B)\n\n",
		mib(a.compr), mib(a.store.MemUsed), float64(a.store.MemUsed)/float64(a.compr), mib(a.store.MetadataBytes),
		mib(a.zsUsed), float64(a.zsUsed)/float64(a.compr), a.zsHugeThreshold,
		mib(a.zsUsed4), float64(a.zsUsed4)/float64(a.compr), a.zsHuge4)
	var round, empty, tails int64
	for _, c := range a.store.Classes {
		round += c.Objects*int64(c.Size) - c.ObjBytes
		empty += (c.Spans*int64(c.ObjsPerSpan) - c.Objects) * int64(c.Size)
		tails += c.Spans * int64(c.Pages*pageSize-c.ObjsPerSpan*c.Size)
	}
	var zround, zempty, ztails int64
	for _, u := range a.zsByClass {
		zspages := int64((u.objects + u.objs - 1) / u.objs)
		zround += int64(u.objects*u.size) - u.objBytes
		zempty += (zspages*int64(u.objs) - int64(u.objects)) * int64(u.size)
		ztails += zspages * int64(u.pages*pageSize-u.objs*u.size)
	}
	fmt.Fprintf(w, "- overhead, uzram: rounding up to the class %s MiB, free slots %s MiB, span tails %s MiB, %d classes in use; zsmalloc (8-page): rounding (with its 8-byte handle) %s MiB, free slots %s MiB, tails %s MiB, %d classes in use\n\n",
		mib(round), mib(empty), mib(tails), len(a.store.Classes), mib(zround), mib(zempty), mib(ztails), len(a.zsByClass))
	// Per class: uzram's and zsmalloc's, largest waste first.
	type row struct {
		what              string
		size, pages, objs int
		objects           int64
		objBytes, used    int64
	}
	var rows []row
	for _, c := range a.store.Classes {
		rows = append(rows, row{"uzram", c.Size, c.Pages, c.ObjsPerSpan, c.Objects, c.ObjBytes, c.Spans * int64(c.Pages) * pageSize})
	}
	for _, u := range a.zsByClass {
		rows = append(rows, row{"zsmalloc", u.size, u.pages, u.objs, int64(u.objects), u.objBytes, u.used})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].used-rows[i].objBytes > rows[j].used-rows[j].objBytes })
	fmt.Fprintf(w, "Overhead per size class (memory − object bytes), the 12 largest of either store, and the huge class:\n\n")
	fmt.Fprintf(w, "| store | class size | pages/span | objs/span | objects | object MiB | memory MiB | overhead KiB | x |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	shown := 0
	for _, r := range rows {
		if shown >= 12 && r.size != pageSize {
			continue
		}
		shown++
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %s | %s | %.0f | %.3f |\n", r.what, r.size, r.pages, r.objs, r.objects,
			mib(r.objBytes), mib(r.used), float64(r.used-r.objBytes)/1024, float64(r.used)/float64(max(r.objBytes, 1)))
	}
	fmt.Fprintln(w)
}

// histogram prints how many objects fall in each 256-byte size band.
func (a *analysis) histogram(w io.Writer) {
	var bands [17]int
	for _, n := range a.sizes {
		bands[min(n/256, 16)]++
	}
	var b strings.Builder
	for i, c := range bands {
		fmt.Fprintf(&b, "%d-%d: %d; ", i*256, i*256+255, c)
	}
	fmt.Fprintf(w, "Object sizes (%s): %s\n\n", a.algo, b.String())
}
