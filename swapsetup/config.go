package swapsetup

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/sizes"
	"github.com/uzram/uzram/streams"
)

// The config file of `uzram setup`, in the spirit of zram-generator's
// zram-generator.conf:
//
//	[uzram0]
//	zram-size = min(ram / 2, 4096)      # MiB; ram is the host's memory in MiB
//	compression-algorithm = lz4 (zstd)  # primary, then recompression algorithms
//	swap-priority = 100
//
// compression-algorithm lists the primary algorithm, optionally with
// parameters ("zstd(level=3)"), then recompression algorithms for priority
// 1, 2, 3, each in parentheses as zram-generator writes them ("(zstd)",
// "(zstd(level=9))") or bare. Other keys: mem-limit (a size such as 1G),
// streams (a count), transport (nbd, the default, or ublk: served as
// /dev/ublkbN, Linux 6.0+).

// SwapConfig is one [section]: one swap device.
type SwapConfig struct {
	Name            string
	Size            string // the expression, in MiB of ram
	Algorithm       string
	AlgorithmParams string   // zram syntax: "level=3"
	Recomp          []string // "zstd" or "zstd level=9", priority 1, 2, ...
	Priority        int
	MemLimit        string
	Streams         int
	Transport       string // "" (nbd) or "ublk"
}

// Defaults are zram-generator's.
const (
	DefaultSizeExpr     = "min(ram / 2, 4096)"
	DefaultSwapPriority = 100
)

// LoadConfig reads a config file.
func LoadConfig(path string) ([]SwapConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	cfgs, err := ParseConfig(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfgs, nil
}

// ParseConfig parses the config file format, checking every value so that
// `uzram setup` fails before it changes anything.
func ParseConfig(r io.Reader) ([]SwapConfig, error) {
	var out []SwapConfig
	var cur *SwapConfig
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' || text[0] == ';' {
			continue
		}
		if text[0] == '[' {
			name, ok := strings.CutSuffix(text[1:], "]")
			name = strings.TrimSpace(name)
			if !ok || name == "" {
				return nil, fmt.Errorf("line %d: bad section %q: want [uzramN]", line, text)
			}
			if seen[name] {
				return nil, fmt.Errorf("line %d: section [%s] given twice", line, name)
			}
			seen[name] = true
			out = append(out, SwapConfig{Name: name, Size: DefaultSizeExpr, Algorithm: "", Priority: DefaultSwapPriority})
			cur = &out[len(out)-1]
			continue
		}
		key, val, ok := strings.Cut(text, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: %q is not key = value", line, text)
		}
		if cur == nil {
			return nil, fmt.Errorf("line %d: %q comes before any [uzramN] section", line, text)
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if err := cur.set(key, val); err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", line, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return out, nil
}

func (c *SwapConfig) set(key, val string) error {
	switch key {
	case "zram-size", "size":
		if _, err := EvalSize(val, 1024); err != nil { // syntax only: ram is known later
			return err
		}
		c.Size = val
	case "compression-algorithm":
		algo, params, recomp, err := ParseAlgorithms(val)
		if err != nil {
			return err
		}
		c.Algorithm, c.AlgorithmParams, c.Recomp = algo, params, recomp
	case "swap-priority":
		n, err := strconv.Atoi(val)
		if err != nil || n < -1 || n > 32767 {
			return fmt.Errorf("bad priority %q: want -1..32767", val)
		}
		c.Priority = n
	case "mem-limit":
		if _, err := sizes.Parse(val); err != nil {
			return err
		}
		c.MemLimit = val
	case "streams":
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 {
			return fmt.Errorf("bad stream count %q: want 0 (one per CPU) or more", val)
		}
		c.Streams = n
	case "transport":
		if val != control.TransportNBD && val != control.TransportUblk {
			return fmt.Errorf("bad transport %q: want nbd or ublk", val)
		}
		c.Transport = val
	default:
		return fmt.Errorf("unknown key (known: zram-size, compression-algorithm, swap-priority, mem-limit, streams, transport)")
	}
	return nil
}

// ParseAlgorithms reads a compression-algorithm value: "lz4 (zstd)",
// "zstd(level=3) (zstd(level=9))", "lz4 zstd". Parameters inside an
// algorithm's parentheses are comma-separated and come back in zram's
// space-separated syntax.
func ParseAlgorithms(v string) (algo, params string, recomp []string, err error) {
	toks, err := splitTop(v)
	if err != nil {
		return "", "", nil, err
	}
	if len(toks) == 0 {
		return "", "", nil, fmt.Errorf("empty: want an algorithm such as lz4")
	}
	if len(toks) > 1+streams.MaxPriority {
		return "", "", nil, fmt.Errorf("%q: at most %d recompression algorithms", v, streams.MaxPriority)
	}
	for i, t := range toks {
		wrapped := strings.HasPrefix(t, "(") && strings.HasSuffix(t, ")")
		if wrapped {
			if i == 0 {
				return "", "", nil, fmt.Errorf("%q: the first algorithm is the primary one and takes no parentheses", v)
			}
			t = t[1 : len(t)-1]
		}
		name, p, err := parseAlgoSpec(t)
		if err != nil {
			return "", "", nil, fmt.Errorf("%q: %w", v, err)
		}
		if i == 0 {
			algo, params = name, p
			continue
		}
		recomp = append(recomp, strings.TrimSpace(name+" "+p))
	}
	return algo, params, recomp, nil
}

// splitTop splits on spaces outside parentheses.
func splitTop(v string) ([]string, error) {
	var out []string
	depth, start := 0, -1
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '(':
			depth++
		case c == ')':
			if depth--; depth < 0 {
				return nil, fmt.Errorf("%q: unbalanced ')'", v)
			}
		case (c == ' ' || c == '\t') && depth == 0:
			if start >= 0 {
				out = append(out, v[start:i])
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("%q: unbalanced '('", v)
	}
	if start >= 0 {
		out = append(out, v[start:])
	}
	return out, nil
}

// parseAlgoSpec reads "zstd" or "zstd(level=3,dict=/x)".
func parseAlgoSpec(s string) (string, string, error) {
	name, rest, hasParams := strings.Cut(s, "(")
	name = strings.TrimSpace(name)
	if name == "" {
		return "", "", fmt.Errorf("missing algorithm name in %q", s)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return "", "", fmt.Errorf("bad algorithm name %q", name)
		}
	}
	if !hasParams {
		return name, "", nil
	}
	inner, ok := strings.CutSuffix(rest, ")")
	if !ok {
		return "", "", fmt.Errorf("unbalanced parentheses in %q", s)
	}
	var kv []string
	for _, f := range strings.Split(inner, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if !strings.Contains(f, "=") {
			return "", "", fmt.Errorf("parameter %q of %s is not key=value", f, name)
		}
		kv = append(kv, f)
	}
	return name, strings.Join(kv, " "), nil
}

// SizeBytes evaluates the size expression for a host with ramMiB of memory
// and rounds it to whole pages.
func (c *SwapConfig) SizeBytes(ramMiB float64) (int64, error) {
	mib, err := EvalSize(c.Size, ramMiB)
	if err != nil {
		return 0, err
	}
	if mib <= 0 {
		return 0, fmt.Errorf("size expression %q gives %g MiB: want more than 0", c.Size, mib)
	}
	b := mib * (1 << 20)
	if b > math.MaxInt64/2 {
		return 0, fmt.Errorf("size expression %q gives %g MiB: too large", c.Size, mib)
	}
	return sizes.RoundPage(int64(math.Ceil(b))), nil
}
