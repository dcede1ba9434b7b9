// Package zramctl prints devices as zramctl lists zram devices: its columns
// and their meanings, aligned, raw (--raw) and JSON (--json) output.
package zramctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/sizes"
)

// Column is one of zramctl's output columns.
type Column struct {
	Name  string
	Help  string
	right bool // numbers are right-aligned, as libsmartcols does for zramctl
	// value gives the cell as text and as a JSON value.
	value func(d *control.Device, inBytes bool) (string, any)
}

func sizeCol(get func(d *control.Device) int64) func(*control.Device, bool) (string, any) {
	return func(d *control.Device, inBytes bool) (string, any) {
		n := get(d)
		if inBytes {
			return strconv.FormatInt(n, 10), n
		}
		h := sizes.Human(n)
		return h, h
	}
}

func countCol(get func(d *control.Device) int64) func(*control.Device, bool) (string, any) {
	return func(d *control.Device, _ bool) (string, any) {
		n := get(d)
		return strconv.FormatInt(n, 10), n
	}
}

// Columns are zramctl's columns in zramctl's order (the order --output-all
// prints them in), with zramctl's meanings: MEM-USED is the peak
// (mem_used_max), MIGRATED is pages_compacted, COMP-RATIO is DATA/TOTAL.
var Columns = []Column{
	{Name: "NAME", Help: "device name", value: func(d *control.Device, _ bool) (string, any) { return d.Name, d.Name }},
	{Name: "DISKSIZE", Help: "limit on the uncompressed amount of data", right: true,
		value: sizeCol(func(d *control.Device) int64 { return d.DiskSize })},
	{Name: "DATA", Help: "uncompressed size of stored data", right: true,
		value: sizeCol(func(d *control.Device) int64 { return d.MM.OrigDataSize })},
	{Name: "COMPR", Help: "compressed size of stored data", right: true,
		value: sizeCol(func(d *control.Device) int64 { return d.MM.ComprDataSize })},
	{Name: "ALGORITHM", Help: "the selected compression algorithm",
		value: func(d *control.Device, _ bool) (string, any) { return d.Algorithm, d.Algorithm }},
	{Name: "STREAMS", Help: "number of concurrent compress operations", right: true,
		value: countCol(func(d *control.Device) int64 { return int64(d.Streams) })},
	{Name: "ZERO-PAGES", Help: "same-filled pages with no allocated memory", right: true,
		value: countCol(func(d *control.Device) int64 { return d.MM.SamePages })},
	{Name: "TOTAL", Help: "all memory including allocator fragmentation and metadata overhead", right: true,
		value: sizeCol(func(d *control.Device) int64 { return d.MM.MemUsedTotal })},
	{Name: "MEM-LIMIT", Help: "memory limit used to store compressed data", right: true,
		value: sizeCol(func(d *control.Device) int64 { return d.MM.MemLimit })},
	{Name: "MEM-USED", Help: "peak memory usage to store compressed data", right: true,
		value: sizeCol(func(d *control.Device) int64 { return d.MM.MemUsedMax })},
	{Name: "MIGRATED", Help: "number of pages freed by compaction", right: true,
		value: countCol(func(d *control.Device) int64 { return d.MM.PagesCompacted })},
	{Name: "COMP-RATIO", Help: "compression ratio: DATA/TOTAL", right: true, value: compRatio},
	{Name: "DEVICE", Help: "the kernel's block device for it: /dev/ublkbN, or the /dev/nbdN it is attached to",
		value: func(d *control.Device, _ bool) (string, any) {
			if d.Node == "" {
				return "", nil
			}
			return d.Node, d.Node
		}},
	{Name: "MOUNTPOINT", Help: "where its block device is mounted, or [SWAP]",
		value: func(d *control.Device, _ bool) (string, any) {
			if d.MountPoint == "" {
				return "", nil
			}
			return d.MountPoint, d.MountPoint
		}},
}

// compRatio is zramctl's "%.4f" of DATA/TOTAL. zramctl prints C's nan or
// inf for an empty store; a number keeps scripts that parse it working.
func compRatio(d *control.Device, _ bool) (string, any) {
	r := 0.0
	if d.MM.MemUsedTotal > 0 {
		r = float64(d.MM.OrigDataSize) / float64(d.MM.MemUsedTotal)
	}
	s := strconv.FormatFloat(r, 'f', 4, 64)
	return s, json.Number(s)
}

// DefaultColumns are zramctl's default columns, and
// uzram's DEVICE (zramctl's NAME is the node itself) comes before
// MOUNTPOINT.
var DefaultColumns = []string{"NAME", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "STREAMS", "DEVICE", "MOUNTPOINT"}

// AllColumns lists every column in order (--output-all).
func AllColumns() []string {
	out := make([]string, len(Columns))
	for i, c := range Columns {
		out[i] = c.Name
	}
	return out
}

func column(name string) (*Column, bool) {
	for i := range Columns {
		if strings.EqualFold(Columns[i].Name, name) {
			return &Columns[i], true
		}
	}
	return nil, false
}

// ParseColumns reads --output: a comma-separated list of column names (any
// case), or "+LIST" to add them to the defaults, as zramctl does.
func ParseColumns(spec string) ([]string, error) {
	var out []string
	if rest, ok := strings.CutPrefix(spec, "+"); ok {
		out = append(out, DefaultColumns...)
		spec = rest
	}
	for _, name := range strings.Split(spec, ",") {
		name = strings.TrimSpace(name)
		c, ok := column(name)
		if !ok {
			return nil, fmt.Errorf("unknown column %q (known: %s)", name, strings.Join(AllColumns(), ","))
		}
		out = append(out, c.Name)
	}
	return out, nil
}

// ListOptions are zramctl's output switches, and --json.
type ListOptions struct {
	Columns    []string // nil: DefaultColumns
	Raw        bool     // no alignment, one space between fields
	Bytes      bool     // sizes in bytes instead of 1.2G
	NoHeadings bool
	JSON       bool
}

// WriteList prints devs as zramctl would.
func WriteList(w io.Writer, devs []control.Device, o ListOptions) error {
	names := o.Columns
	if len(names) == 0 {
		names = DefaultColumns
	}
	cols := make([]*Column, len(names))
	for i, n := range names {
		c, ok := column(n)
		if !ok {
			return fmt.Errorf("unknown column %q (known: %s)", n, strings.Join(AllColumns(), ","))
		}
		cols[i] = c
	}
	if o.JSON {
		return writeJSONList(w, devs, cols, o.Bytes)
	}
	rows := make([][]string, 0, len(devs)+1)
	if !o.NoHeadings {
		head := make([]string, len(cols))
		for i, c := range cols {
			head[i] = c.Name
		}
		rows = append(rows, head)
	}
	for i := range devs {
		row := make([]string, len(cols))
		for j, c := range cols {
			row[j], _ = c.value(&devs[i], o.Bytes)
		}
		rows = append(rows, row)
	}
	var b bytes.Buffer
	if o.Raw {
		for _, row := range rows {
			for j, cell := range row {
				if j > 0 {
					b.WriteByte(' ')
				}
				b.WriteString(rawEscape(cell))
			}
			b.WriteByte('\n')
		}
	} else {
		width := make([]int, len(cols))
		for _, row := range rows {
			for j, cell := range row {
				width[j] = max(width[j], len(cell))
			}
		}
		for _, row := range rows {
			var line strings.Builder
			for j, cell := range row {
				if j > 0 {
					line.WriteByte(' ')
				}
				pad := strings.Repeat(" ", width[j]-len(cell))
				if cols[j].right {
					line.WriteString(pad + cell)
				} else {
					line.WriteString(cell + pad)
				}
			}
			// libsmartcols does not pad the last column; nor do we leave
			// the padding of an empty one behind.
			b.WriteString(strings.TrimRight(line.String(), " "))
			b.WriteByte('\n')
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// rawEscape hex-escapes what would split or break a raw field, as
// libsmartcols' raw mode does ("a b" becomes "a\x20b").
func rawEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == '\\' || c == 0x7f {
			fmt.Fprintf(&b, `\x%02x`, c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// writeJSONList prints {"devices": [...]} with keys in column order, the
// column names lowercased as lsblk --json does; sizes are strings unless
// --bytes, counts are numbers and an empty MOUNTPOINT is null.
func writeJSONList(w io.Writer, devs []control.Device, cols []*Column, inBytes bool) error {
	var b bytes.Buffer
	b.WriteString("{\n  \"devices\": [")
	for i := range devs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("\n    {")
		for j, c := range cols {
			if j > 0 {
				b.WriteByte(',')
			}
			_, v := c.value(&devs[i], inBytes)
			key, _ := json.Marshal(strings.ToLower(c.Name))
			val, err := json.Marshal(v)
			if err != nil {
				return fmt.Errorf("zramctl: json: %w", err)
			}
			fmt.Fprintf(&b, "\n      %s: %s", key, val)
		}
		b.WriteString("\n    }")
	}
	if len(devs) > 0 {
		b.WriteString("\n  ")
	}
	b.WriteString("]\n}\n")
	_, err := w.Write(b.Bytes())
	return err
}
