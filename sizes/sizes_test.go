package sizes

import "testing"

func TestParse(t *testing.T) {
	good := map[string]int64{
		"4096": 4096, "4K": 4096, "4k": 4096, "1G": 1 << 30, "1.5G": 3 << 29,
		"2TiB": 2 << 40, " 512M ": 512 << 20, "0": 0, "10B": 10, "1GB": 1 << 30,
	}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "4X", "1..2G", "abc", "1e400", "9999999999T"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", in)
		}
	}
}

func TestRoundPage(t *testing.T) {
	for in, want := range map[int64]int64{0: 0, 1: 4096, 4096: 4096, 4097: 8192} {
		if got := RoundPage(in); got != want {
			t.Errorf("RoundPage(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestHuman(t *testing.T) {
	for in, want := range map[int64]string{
		0: "0B", 512: "512B", 4096: "4K", 1 << 30: "1G", 1288490189: "1.2G",
		512 << 20: "512M", 1536: "1.5K", 4 << 40: "4T",
	} {
		if got := Human(in); got != want {
			t.Errorf("Human(%d) = %q, want %q", in, got, want)
		}
	}
}
