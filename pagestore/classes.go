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
	// classObjects is how many objects a class is expected to hold: every
	// class in use has one partly filled span, half empty on average, and
	// that costs each of its objects PageSize/2/classObjects per page of
	// span length. Real data spreads over 150-180 classes (a 330 MiB corpus
	// of program heaps: 84,000 objects, a few hundred per class at the
	// tails), and there 16-page spans left 3.7-4.1 MiB of slots free where
	// zsmalloc's shorter zspages left 1.1 (mem_used 1.034-1.047x the data
	// against its 1.027-1.028); with this term 1.023-1.030, and at 4x that
	// store 1.012-1.015 (was 1.013-1.016). A store of one size of object
	// (fio's 50% pages: one class) keeps its long spans (1.007).
	classObjects = 500
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
// span's tail, its Go-heap record and its share of the class's partly
// filled last span (classObjects); the shortest wins a tie.
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
		// and of the span's record, and the expected free slots of the
		// class's last span. Exact fits (2048, 4096...) would otherwise get
		// one-page spans whose record costs more than a longer span's tail.
		cost := func(p int) float64 {
			objs := p * PageSize / size
			return float64(p*PageSize-objs*size+spanMetaBytes)/float64(objs) + float64(p*PageSize)/(2*classObjects)
		}
		best, minCost := uint32(1), cost(1)
		for p := 2; p <= maxSpanPages; p++ {
			if c := cost(p); c < minCost {
				best, minCost = uint32(p), c
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
