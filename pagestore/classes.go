package pagestore

// Size classes: which slot size and span length an object of n bytes gets.

const (
	// PageSize is the OS page and the block device's page: spans are whole
	// multiples of it, and MemUsed moves in multiples of it.
	PageSize = 4096
	// MaxObjectSize is the largest object Put accepts: one raw page.
	MaxObjectSize = 4096

	minClassSize = 32 // zsmalloc's ZS_MIN_ALLOC_SIZE: room for tiny pages without a class per byte
	classStep    = 16 // zsmalloc's ZS_SIZE_CLASS_DELTA on 4 KiB pages
	maxSpanPages = 16 // zsmalloc allows chains up to 16 pages; longer spans waste less at the tail

	// spanMetaBytes approximates a span's Go-heap record (struct plus slice
	// header rounding); the per-slot rev entry is the same for every length.
	spanMetaBytes = 96
	// spanPrefer: a longer span is chosen only if it saves at least this
	// fraction of the object size per object, so short spans (less memory
	// stranded in a class's partial span, finer compaction) win near-ties.
	spanPrefer = 0.002
)

// classInfo is one size class's geometry.
type classInfo struct {
	size  uint32 // slot size in bytes: the largest object the class holds
	pages uint32 // span length in pages
	objs  uint32 // slots per span
}

// buildClasses computes the class table and the size-to-class lookup indexed
// by (n+15)/16. Sizes run 32..4096 in 16-byte steps; each picks the span
// length (1..maxSpanPages pages) that wastes least per object, counting the
// span's tail and its Go-heap record.
// Adjacent sizes that end up with the same pages and slots per span are
// merged into the largest of them, as zsmalloc does: their spans are laid out
// identically, so one class serves both at no cost in memory and with fewer
// partially filled spans.
func buildClasses() ([]classInfo, [MaxObjectSize/classStep + 1]uint8) {
	var desc []classInfo // largest first, so a merged class keeps the largest size
	var bySize [MaxObjectSize/classStep + 1]uint8
	var classOf [MaxObjectSize/classStep + 1]int // index into desc
	for size := MaxObjectSize; size >= minClassSize; size -= classStep {
		// Cost per object of each span length: its share of the tail waste
		// and of the span's record. Exact fits (2048, 4096...) would otherwise
		// get one-page spans whose record costs more than a 16-page span's tail.
		cost := func(p int) float64 {
			objs := p * PageSize / size
			return float64(p*PageSize-objs*size+spanMetaBytes) / float64(objs)
		}
		minCost := cost(1)
		for p := 2; p <= maxSpanPages; p++ {
			minCost = min(minCost, cost(p))
		}
		best := uint32(1)
		for p := 1; p <= maxSpanPages; p++ {
			if cost(p) <= minCost+spanPrefer*float64(size) {
				best = uint32(p)
				break
			}
		}
		ci := classInfo{size: uint32(size), pages: best, objs: best * PageSize / uint32(size)}
		if n := len(desc); n > 0 && desc[n-1].pages == ci.pages && desc[n-1].objs == ci.objs {
			classOf[size/classStep] = n - 1
			continue
		}
		desc = append(desc, ci)
		classOf[size/classStep] = len(desc) - 1
	}
	// Objects below the smallest class share it.
	for i := 0; i < minClassSize/classStep; i++ {
		classOf[i] = classOf[minClassSize/classStep]
	}
	n := len(desc)
	if n > 255 {
		panic("pagestore: too many size classes for a uint8 index")
	}
	asc := make([]classInfo, n)
	for i, ci := range desc {
		asc[n-1-i] = ci
	}
	for i := range bySize {
		bySize[i] = uint8(n - 1 - classOf[i])
	}
	return asc, bySize
}

// sizeIndex maps an object length 1..MaxObjectSize to its bySize index.
func sizeIndex(n int) int { return (n + classStep - 1) / classStep }
