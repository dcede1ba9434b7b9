package pagestore

import "testing"

func TestClassTable(t *testing.T) {
	infos, bySize := buildClasses()
	for n := 1; n <= MaxObjectSize; n++ {
		ci := infos[bySize[sizeIndex(n)]]
		if int(ci.size) < n {
			t.Fatalf("size %d maps to class %d", n, ci.size)
		}
		if ci.objs == 0 || ci.objs*ci.size > ci.pages*PageSize || ci.objs > entMask12+1 {
			t.Fatalf("bad class %+v", ci)
		}
		// The class must be the smallest that holds n (up to merging, which
		// never changes the memory per object).
		if n > minClassSize {
			want := (n + classStep - 1) / classStep * classStep
			if ci.pages*PageSize/ci.objs < uint32(want) {
				t.Fatalf("size %d: class %+v", n, ci)
			}
		}
	}
	var waste float64
	for _, ci := range infos {
		waste += float64(ci.pages*PageSize-ci.objs*ci.size) / float64(ci.pages*PageSize)
	}
	t.Logf("%d classes, mean tail waste %.3f%%", len(infos), 100*waste/float64(len(infos)))
}
