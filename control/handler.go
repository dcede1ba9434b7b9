package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/uzram/uzram/version"
)

// Manager is what the daemon does for the API. Errors should wrap (or be
// made by Errorf from) one of the Err* values so they map to a status code.
type Manager interface {
	List() []Device
	Get(name string) (Device, error)
	Create(req CreateRequest) (Device, error)
	// Remove frees a device (zram's reset); refused with ErrBusy while attached.
	Remove(name string) error
	// SetKnob writes value to a knob, a zram sysfs file by its name
	// (package knob has the table), and may say what it did; an unknown
	// knob is ErrInvalid. ctx ends when the caller goes away, so a long
	// recompress stops with it.
	SetKnob(ctx context.Context, name, knob, value string) (string, error)
	// SetAttachment records or (nbd "") forgets the device's /dev/nbdN.
	SetAttachment(name, nbd string) error
	// Stop makes the daemon shut down (SIGTERM's way); without force it is
	// refused with ErrBusy while a ublk node is in use.
	Stop(force bool) error
}

// API routes, versioned so a newer CLI can tell an older daemon.
//
//	GET    /v1/devices                     list, with all stats
//	POST   /v1/devices                     create (CreateRequest)
//	GET    /v1/devices/{name}              one device
//	DELETE /v1/devices/{name}              reset: free it (409 while attached)
//	GET    /v1/devices/{name}/{file}       mm_stat, io_stat, debug_stat (zram's), recomp_stat as text
//	PUT    /v1/devices/{name}/{knob}       write a knob (KnobRequest)
//	PUT    /v1/devices/{name}/attachment   record /dev/nbdN (AttachRequest)
//	POST   /v1/stop                        stop the daemon (StopRequest; 409 while a ublk node is in use)
//	GET    /v1/version                     the daemon's version and commit (version.Info)
const apiPrefix = "/v1/devices"

const (
	stopPath    = "/v1/stop"
	versionPath = "/v1/version"
)

// maxBody bounds request bodies: every request is a line of text or two.
const maxBody = 64 << 10

// Handler serves the API for m.
func Handler(m Manager) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+apiPrefix, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.List())
	})
	mux.HandleFunc("POST "+apiPrefix, func(w http.ResponseWriter, r *http.Request) {
		var req CreateRequest
		if !readJSON(w, r, &req) {
			return
		}
		d, err := m.Create(req)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, d)
	})
	mux.HandleFunc("GET "+versionPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, version.Get())
	})
	mux.HandleFunc("POST "+stopPath, func(w http.ResponseWriter, r *http.Request) {
		var req StopRequest
		if !readJSON(w, r, &req) {
			return
		}
		if err := m.Stop(req.Force); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("GET "+apiPrefix+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		d, err := m.Get(r.PathValue("name"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
	mux.HandleFunc("DELETE "+apiPrefix+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Remove(r.PathValue("name")); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET "+apiPrefix+"/{name}/{file}", func(w http.ResponseWriter, r *http.Request) {
		serveStatFile(m, w, r)
	})
	mux.HandleFunc("PUT "+apiPrefix+"/{name}/{knob}", func(w http.ResponseWriter, r *http.Request) {
		serveKnob(m, w, r)
	})
	mux.HandleFunc("PUT "+apiPrefix+"/{name}/attachment", func(w http.ResponseWriter, r *http.Request) {
		var req AttachRequest
		if !readJSON(w, r, &req) {
			return
		}
		if err := m.SetAttachment(r.PathValue("name"), req.NBD); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// serveStatFile answers GET /v1/devices/NAME/FILE with one of zram's stat
// files as text.
func serveStatFile(m Manager, w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	if !slices.Contains(StatFiles, file) {
		writeError(w, Errorf(ErrInvalid, "no stats file %q (known: %s)", file, strings.Join(StatFiles, ", ")))
		return
	}
	d, err := m.Get(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch file {
	case "mm_stat":
		io.WriteString(w, d.MMStatText)
	case "io_stat":
		io.WriteString(w, d.IOStatText)
	case "debug_stat":
		io.WriteString(w, d.DebugStatText)
	case "recomp_stat":
		io.WriteString(w, d.RecompStatText)
	}
}

// serveKnob answers PUT /v1/devices/NAME/KNOB: a knob's write, with a
// progress stream when the client asks for one.
func serveKnob(m Manager, w http.ResponseWriter, r *http.Request) {
	knob := r.PathValue("knob")
	var req KnobRequest
	if !readJSON(w, r, &req) {
		return
	}
	if r.Header.Get(ProgressHeader) != "" {
		streamKnob(w, r, m, r.PathValue("name"), knob, req.Value)
		return
	}
	res, err := m.SetKnob(r.Context(), r.PathValue("name"), knob, req.Value)
	if err != nil {
		writeError(w, err)
		return
	}
	if res == "" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, KnobResult{Result: res})
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields() // a typo in a field must not silently mean "default"
	if err := dec.Decode(v); err != nil {
		writeError(w, Errorf(ErrInvalid, "bad request body: %v", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// statusOf maps the Err* kinds to HTTP status codes; anything else is the
// daemon's own failure.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrBusy), errors.Is(err, ErrExists):
		return http.StatusConflict
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, statusOf(err), errorBody{Error: err.Error()})
}

// kindOf is statusOf backwards, for the client.
func kindOf(code int) error {
	switch code {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrBusy
	case http.StatusBadRequest:
		return ErrInvalid
	}
	return fmt.Errorf("daemon error (HTTP %d)", code)
}
