package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/uzram/uzram/version"
)

// ErrNoDaemon means nothing answers on the control socket.
var ErrNoDaemon = errors.New("daemon not running")

// Client calls a daemon's control API over its unix socket.
type Client struct {
	Socket string
	hc     *http.Client
	long   *http.Client // no deadline: recompress and compact run as long as they need
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true, // one CLI call, one request: nothing to keep
	}
	// Creating a large device preallocates its slot table, so allow time.
	return &Client{Socket: socket, hc: &http.Client{Transport: tr, Timeout: 2 * time.Minute}, long: &http.Client{Transport: tr}}
}

func (c *Client) do(method, path string, in, out any) error {
	return c.doWith(c.hc, method, path, in, out)
}

func (c *Client) doWith(hc *http.Client, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("control: encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	// The host part is ignored: the transport always dials the socket.
	req, err := http.NewRequest(method, "http://uzram"+path, body)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("control: read reply from %s: %w", c.Socket, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb errorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(data))
		}
		return &Error{Msg: eb.Error, kind: kindOf(resp.StatusCode)}
	}
	switch o := out.(type) {
	case nil:
	case *KnobResult:
		if len(data) > 0 { // 204: nothing to tell
			if err := json.Unmarshal(data, o); err != nil {
				return fmt.Errorf("control: decode reply from %s: %w", c.Socket, err)
			}
		}
	case *string:
		*o = string(data)
	default:
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("control: decode reply from %s: %w", c.Socket, err)
		}
	}
	return nil
}

// dialError turns "connect: no such file" into what the admin should do.
func (c *Client) dialError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return Errorf(ErrNoDaemon, "no uzram daemon on %s: start one with `uzram serve` or give its socket with --control", c.Socket)
	case errors.Is(err, os.ErrPermission):
		return Errorf(ErrNoDaemon, "cannot reach the uzram daemon on %s: permission denied (the control socket is root's)", c.Socket)
	}
	return fmt.Errorf("control: %s: %w", c.Socket, err)
}

func devPath(name string) string { return apiPrefix + "/" + url.PathEscape(name) }

// List returns every device with its stats, in creation order.
func (c *Client) List() ([]Device, error) {
	var out []Device
	err := c.do(http.MethodGet, apiPrefix, nil, &out)
	return out, err
}

// Get returns one device.
func (c *Client) Get(name string) (Device, error) {
	var out Device
	err := c.do(http.MethodGet, devPath(name), nil, &out)
	return out, err
}

// Create makes a device and returns it.
func (c *Client) Create(req CreateRequest) (Device, error) {
	var out Device
	err := c.do(http.MethodPost, apiPrefix, req, &out)
	return out, err
}

// Remove frees a device (zram's reset).
func (c *Client) Remove(name string) error {
	return c.do(http.MethodDelete, devPath(name), nil, nil)
}

// SetKnob writes a zram knob and returns what the daemon had to say about
// it, if anything. Long knobs (compact, recompress) go through
// SetKnobProgress, which waits without a deadline.
func (c *Client) SetKnob(name, knob, value string) (string, error) {
	var res KnobResult
	err := c.do(http.MethodPut, devPath(name)+"/"+knob, KnobRequest{Value: value}, &res)
	return res.Result, err
}

// StatFile returns mm_stat, io_stat or debug_stat as zram prints it.
func (c *Client) StatFile(name, file string) (string, error) {
	var out string
	err := c.do(http.MethodGet, devPath(name)+"/"+file, nil, &out)
	return out, err
}

// SetAttachment records (or with nbd "" forgets) the device's /dev/nbdN.
func (c *Client) SetAttachment(name, nbd string) error {
	return c.do(http.MethodPut, devPath(name)+"/attachment", AttachRequest{NBD: nbd}, nil)
}

// Stop asks the daemon to shut down (StopRequest).
func (c *Client) Stop(force bool) error {
	return c.do(http.MethodPost, stopPath, StopRequest{Force: force}, nil)
}

// Version asks the daemon which uzram it runs: after an upgrade, a daemon
// not yet re-executed (systemctl reload uzram) still reports the old one.
func (c *Client) Version() (version.Info, error) {
	var v version.Info
	err := c.do(http.MethodGet, versionPath, nil, &v)
	return v, err
}
