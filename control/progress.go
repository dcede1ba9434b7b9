package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// Long knobs (recompress) can report progress while they run. A client that
// sends ProgressHeader gets an NDJSON stream instead of one reply: a
// {"progress": ...} line whenever the daemon reports, then one
// {"result": "..."} or {"error": "..."} line.
const ProgressHeader = "X-Uzram-Progress"

type progressKey struct{}

// WithProgress returns a context carrying fn, for Manager.SetKnob to call.
func WithProgress(ctx context.Context, fn func(v any)) context.Context {
	return context.WithValue(ctx, progressKey{}, fn)
}

// ProgressFrom returns the progress callback in ctx, or nil.
func ProgressFrom(ctx context.Context) func(v any) {
	fn, _ := ctx.Value(progressKey{}).(func(v any))
	return fn
}

type progressLine struct {
	Progress json.RawMessage `json:"progress,omitempty"`
	Result   *string         `json:"result,omitempty"`
	Error    string          `json:"error,omitempty"`
	Kind     int             `json:"kind,omitempty"` // the HTTP status the error would have had
}

// streamKnob runs a knob with progress going out as NDJSON lines.
func streamKnob(w http.ResponseWriter, r *http.Request, m Manager, name, knob, value string) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	send := func(l progressLine) {
		enc.Encode(l) // a gone client only ends the stream
		if flusher != nil {
			flusher.Flush()
		}
	}
	ctx := WithProgress(r.Context(), func(v any) {
		if b, err := json.Marshal(v); err == nil {
			send(progressLine{Progress: b})
		}
	})
	res, err := m.SetKnob(ctx, name, knob, value)
	if err != nil {
		send(progressLine{Error: err.Error(), Kind: statusOf(err)})
		return
	}
	send(progressLine{Result: &res})
}

// SetKnobProgress is SetKnob for long knobs: it waits without a deadline,
// and onProgress, if not nil, gets each progress report (JSON, as the
// daemon's knob produced it) while the knob runs.
func (c *Client) SetKnobProgress(name, knob, value string, onProgress func(json.RawMessage)) (string, error) {
	b, _ := json.Marshal(KnobRequest{Value: value})
	req, err := http.NewRequest(http.MethodPut, "http://uzram"+devPath(name)+"/"+knob, bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("control: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(ProgressHeader, "1")
	resp, err := c.long.Do(req)
	if err != nil {
		return "", c.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var eb errorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		return "", &Error{Msg: eb.Error, kind: kindOf(resp.StatusCode)}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l progressLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return "", fmt.Errorf("control: decode progress from %s: %w", c.Socket, err)
		}
		switch {
		case l.Error != "":
			return "", &Error{Msg: l.Error, kind: kindOf(l.Kind)}
		case l.Result != nil:
			return *l.Result, nil
		case l.Progress != nil && onProgress != nil:
			onProgress(l.Progress)
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("control: read progress from %s: %w", c.Socket, err)
	}
	return "", fmt.Errorf("control: %s ended without a result", c.Socket)
}
