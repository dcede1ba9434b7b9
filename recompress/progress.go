package recompress

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/uzram/uzram/sizes"
)

// FormatProgress is one line of a run's progress, with a bar width cells
// wide (no bar if width < 3):
//
//	recompress: [=====>    ] 52% 1234/2345 pages, 3.4M saved
func FormatProgress(r Result, width int) string {
	var b strings.Builder
	b.WriteString("recompress: ")
	frac := 1.0
	if r.Candidates > 0 {
		frac = float64(r.Done) / float64(r.Candidates)
	}
	if width >= 3 {
		inner := width - 2
		full := int(frac * float64(inner))
		b.WriteByte('[')
		b.WriteString(strings.Repeat("=", full))
		if full < inner {
			b.WriteByte('>')
			b.WriteString(strings.Repeat(" ", inner-full-1))
		}
		b.WriteString("] ")
	}
	fmt.Fprintf(&b, "%d%% %d/%d pages, %s saved", int(frac*100), r.Done, r.Candidates, sizes.Human(r.BytesSaved))
	return b.String()
}

// FormatResult is a run's summary line.
func FormatResult(r Result) string {
	s := fmt.Sprintf("recompress: %d candidates, %d tried, %d recompressed, %d skipped, %d incompressible, %d failed; %s saved (%s of store slots); %.2fs CPU in %.2fs",
		r.Candidates, r.Attempted, r.Recompressed, r.Skipped, r.Incompressible, r.Failed,
		sizes.Human(r.BytesSaved), sizes.Human(r.MemSaved), r.CPU.Seconds(), r.Elapsed.Seconds())
	if r.Preempted {
		s += " (stopped for a manual run)"
	}
	return s
}

// Bar draws a run's progress on a terminal: Update redraws one line in
// place (at most ten times a second), Finish ends it with the summary. On a
// writer that is not a terminal Update draws nothing, so logs get only the
// summary.
type Bar struct {
	w     io.Writer
	tty   bool
	width int
	last  time.Time
	drawn bool
}

// NewBar returns a bar writing to w; tty says whether w is a terminal.
func NewBar(w io.Writer, tty bool) *Bar { return &Bar{w: w, tty: tty, width: 32} }

// Update is a Recompress progress callback.
func (b *Bar) Update(r Result) {
	if !b.tty || time.Since(b.last) < 100*time.Millisecond {
		return
	}
	b.last = time.Now()
	// \r and erase-to-end-of-line: the new line may be shorter.
	fmt.Fprintf(b.w, "\r%s\x1b[K", FormatProgress(r, b.width))
	b.drawn = true
}

// Finish draws the last state of the bar (on a terminal) and the summary.
func (b *Bar) Finish(r Result) {
	if b.tty {
		fmt.Fprintf(b.w, "\r%s\x1b[K\n", FormatProgress(r, b.width))
	} else if b.drawn {
		fmt.Fprintln(b.w)
	}
	fmt.Fprintln(b.w, FormatResult(r))
}
