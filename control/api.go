// Package control is uzram's control plane: an HTTP+JSON API on a unix
// socket that the daemon serves and the CLI calls. The daemon implements
// Manager; Handler turns HTTP requests into Manager calls and Manager errors
// into status codes; Client is the other end. What the CLI does around the
// API lives in zramctl (the list formats) and swapsetup (attach, swapon, the
// setup config file).
package control

import (
	"errors"
	"fmt"
	"regexp"
)

// DefaultSocketDir holds the daemon's sockets unless told otherwise: one
// per device (NAME.sock) and the control socket.
const DefaultSocketDir = "/run/uzram"

// DefaultSocket is where `uzram serve` listens for control requests unless
// told otherwise; it sits with the devices' sockets.
const DefaultSocket = DefaultSocketDir + "/control.sock"

// Errors a Manager returns, wrapped with a message for the admin. Handler
// maps them to HTTP status codes and Client maps the codes back, so the CLI
// can tell "no such device" from "busy" without parsing text.
var (
	ErrNotFound = errors.New("no such device")
	ErrBusy     = errors.New("device busy")
	ErrInvalid  = errors.New("invalid request")
	ErrExists   = errors.New("device exists")
)

// CreateRequest asks for a new device. Sizes are strings in sizes.Parse's
// syntax so the daemon reports a bad size in the admin's own spelling.
type CreateRequest struct {
	Name            string `json:"name,omitempty"` // "" picks the first free uzramN
	Size            string `json:"size"`
	Algorithm       string `json:"algorithm,omitempty"`
	AlgorithmParams string `json:"algorithm_params,omitempty"`
	StreamMode      string `json:"stream_mode,omitempty"`
	Streams         int    `json:"streams,omitempty"`
	MemLimit        string `json:"mem_limit,omitempty"`
	// Transport is how the kernel reaches the device: "nbd" (the default:
	// a unix socket that nbd-client attaches to /dev/nbdN) or "ublk" (the
	// kernel's ublk driver serves it as /dev/ublkbN; no socket).
	Transport string `json:"transport,omitempty"`
	// UblkID asks for /dev/ublkbN with this N; nil takes the first free one.
	UblkID *int `json:"ublk_id,omitempty"`
	// UblkQueues is the number of ublk queues, a thread each (0: one per CPU).
	UblkQueues int `json:"ublk_queues,omitempty"`
}

// Transports.
const (
	TransportNBD  = "nbd"
	TransportUblk = "ublk"
)

// MMStat is zram's mm_stat, column for column.
type MMStat struct {
	OrigDataSize   int64 `json:"orig_data_size"`
	ComprDataSize  int64 `json:"compr_data_size"`
	MemUsedTotal   int64 `json:"mem_used_total"`
	MemLimit       int64 `json:"mem_limit"`
	MemUsedMax     int64 `json:"mem_used_max"`
	SamePages      int64 `json:"same_pages"`
	PagesCompacted int64 `json:"pages_compacted"`
	HugePages      int64 `json:"huge_pages"`
	HugePagesSince int64 `json:"huge_pages_since"`
}

// IOStat is zram's io_stat.
type IOStat struct {
	FailedReads  int64 `json:"failed_reads"`
	FailedWrites int64 `json:"failed_writes"`
	InvalidIO    int64 `json:"invalid_io"`
	NotifyFree   int64 `json:"notify_free"`
}

// Device is what the API tells about a device: zramctl's columns and the
// stats files, plus where to reach it.
type Device struct {
	Name            string `json:"name"`
	Algorithm       string `json:"algorithm"`
	AlgorithmParams string `json:"algorithm_params,omitempty"`
	DiskSize        int64  `json:"disksize"`
	Streams         int    `json:"streams"`
	Socket          string `json:"socket,omitempty"`
	// Connections is how many NBD connections are in transmission on it.
	Connections int `json:"connections"`
	// NBD is the /dev/nbdN it is attached to, when known.
	NBD string `json:"nbd,omitempty"`
	// Transport is "nbd" or "ublk" (CreateRequest.Transport).
	Transport string `json:"transport"`
	// Node is the kernel's block device for it: its /dev/ublkbN, or the
	// /dev/nbdN it is attached to (NBD), if any.
	Node string `json:"node,omitempty"`
	// MountPoint is "[SWAP]" or where NBD is mounted, as zramctl shows it.
	MountPoint string `json:"mountpoint,omitempty"`
	// Compressors are the algorithms in use: priority 0 is the primary,
	// 1..3 recompress; old ones stay while pages they wrote remain.
	Compressors []Compressor `json:"compressors,omitempty"`
	MM          MMStat       `json:"mm_stat"`
	IO          IOStat       `json:"io_stat"`
	// PartialWrites counts ublk writes completed in part because store
	// memory was short (the kernel sent the rest again): what would have
	// been refused writes.
	PartialWrites int64 `json:"partial_writes"`
	// ReserveWaits and NoMem: writes that waited for the store's reserve of
	// prefaulted memory, and writes refused after waiting (ENOSPC).
	ReserveWaits int64 `json:"reserve_waits"`
	NoMem        int64 `json:"nomem"`
	// ReserveBytes is the store's prefaulted memory not yet holding pages.
	ReserveBytes int64 `json:"reserve_bytes"`
	// The stats files as zram prints them.
	MMStatText    string `json:"mm_stat_text"`
	IOStatText    string `json:"io_stat_text"`
	DebugStatText string `json:"debug_stat_text"`
	// RecompStatText is uzram's own: recompression figures (blockdev.Stats.RecompStat).
	RecompStatText string `json:"recomp_stat_text"`
}

// Compressor is one algorithm a device holds.
type Compressor struct {
	Priority  int    `json:"priority"`
	Algorithm string `json:"algorithm"`
	Params    string `json:"params,omitempty"`
	Current   bool   `json:"current"` // new pages of its priority use it
}

// StatFiles are the stats files the API serves as text, by zram name.
var StatFiles = []string{"mm_stat", "io_stat", "debug_stat", "recomp_stat"}

// KnobRequest is the body of a knob write.
type KnobRequest struct {
	Value string `json:"value"`
}

// KnobResult is a knob write's answer when it has something to tell, such
// as what a recompress run did.
type KnobResult struct {
	Result string `json:"result"`
}

// AttachRequest records (NBD set) or forgets (NBD empty) which /dev/nbdN a
// device was attached to by `uzram attach`, so MOUNTPOINT can find it even
// when nbd-client has exited (netlink mode leaves no process behind).
type AttachRequest struct {
	NBD string `json:"nbd"`
}

var nbdPattern = regexp.MustCompile(`^/dev/nbd[0-9]+$`)

// IsNBD reports whether s names an NBD device node, /dev/nbdN: what an
// AttachRequest may record.
func IsNBD(s string) bool { return nbdPattern.MatchString(s) }

// StopRequest asks the daemon to stop (`uzram stop`). Without Force it is
// refused while a ublk node is in use (swap, a mount): the kernel would fail
// that swap's I/O.
type StopRequest struct {
	Force bool `json:"force"`
}

// errorBody is every non-2xx response.
type errorBody struct {
	Error string `json:"error"`
}

// Error is an API failure as the client sees it: the daemon's one-line
// message, and the sentinel it matches for errors.Is.
type Error struct {
	Msg  string
	kind error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.kind }

// Errorf builds an error that matches kind (one of the Err* values) and
// reads as the formatted message alone, so the admin sees one clean line.
func Errorf(kind error, format string, args ...any) error {
	return &Error{Msg: fmt.Sprintf(format, args...), kind: kind}
}
