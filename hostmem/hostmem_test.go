package hostmem

import (
	"os"
	"testing"
)

func TestHostMem(t *testing.T) {
	if _, err := os.Stat("/proc/meminfo"); err != nil {
		t.Skip("no /proc/meminfo here")
	}
	ram, err := RAMMiB()
	if err != nil || ram < 64 {
		t.Fatalf("RAMMiB = %v, %v", ram, err)
	}
	avail, err := MeminfoKiB("MemAvailable")
	if err != nil || avail <= 0 || float64(avail)/1024 > ram {
		t.Fatalf("MemAvailable = %d KiB, %v (RAM %.0f MiB)", avail, err, ram)
	}
	if _, err := MeminfoKiB("NoSuchField"); err == nil {
		t.Fatal("MeminfoKiB(NoSuchField) succeeded")
	}
	if kib, err := MinFreeKiB(); err != nil || kib == 0 {
		t.Fatalf("MinFreeKiB = %d, %v", kib, err)
	}
}
