// Command uzram is a compressed RAM block device served over NBD: the
// kernel's zram, in userspace. main.go is wiring only: flags to configs.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/uzram/uzram/blockdev/nbd"
	"github.com/uzram/uzram/blockdev/ublk"
	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/daemon"
	"github.com/uzram/uzram/hostmem"
	"github.com/uzram/uzram/knob"
	"github.com/uzram/uzram/recompress"
	"github.com/uzram/uzram/sizes"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/swapsafe"
	"github.com/uzram/uzram/swapsetup"
	"github.com/uzram/uzram/version"
	"github.com/uzram/uzram/zcomp"
	"github.com/uzram/uzram/zramctl"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "uzram: %v\n", err)
		os.Exit(1)
	}
}

// newApp is the whole CLI: its definition is also what the man page
// (`uzram man`, manpage.go) and shell completion are made from.
func newApp() *cli.App {
	// -V as zramctl; -v is serve's --verbose.
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Aliases: []string{"V"}, Usage: "print the version and commit, and the running daemon's"}
	cli.VersionPrinter = printVersion
	return &cli.App{
		Name:  "uzram",
		Usage: "compressed RAM block devices served over NBD (userspace zram)",
		UsageText: "uzram [options] [NAME...]                 list devices, as zramctl\n" +
			"uzram --find --size 4G [--algorithm zstd]  create a device, print its name\n" +
			"uzram --reset NAME...                      free devices\n" +
			"uzram COMMAND [options] [args]             run the daemon, tune a device, attach it, make it swap",
		Version:  version.Get().String(),
		Flags:    listFlags(),
		Action:   listAction,
		Commands: append(append([]*cli.Command{serveCommand()}, clientCommands()...), manCommand()),
		// Shell completion asks the binary itself (contrib/completion):
		// commands and flags from this definition, device names from the
		// running daemon.
		EnableBashCompletion: true,
		BashComplete:         completeRoot,
		// Every error is one line on stderr (main prints it), never a usage dump.
		OnUsageError:   usageError,
		ExitErrHandler: func(c *cli.Context, err error) {},
	}
}

// printVersion is --version: this binary's version and commit, then the
// daemon's, if one answers on the control socket (after an upgrade, the
// daemon runs the old binary until `systemctl reload uzram`).
func printVersion(c *cli.Context) {
	fmt.Printf("uzram %s\n", version.Get())
	path, _ := controlFlag(c)
	if v, err := control.NewClient(path).Version(); err == nil {
		fmt.Printf("daemon %s (%s)\n", v, path)
	}
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:         "serve",
		Usage:        "run the NBD server (default: one 1 GiB lz4 device uzram0 on /run/uzram/uzram0.sock)",
		Flags:        serveFlags(),
		OnUsageError: usageError,
		Action:       serveAction,
	}
}

func serveFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "size", Value: "1G", Usage: "device size in bytes or with a K/M/G/T suffix, rounded up to 4 KiB"},
		&cli.StringFlag{Name: "algorithm", Value: zcomp.Default, Usage: "compression algorithm: lz4, lz4hc, zstd, deflate"},
		&cli.StringFlag{Name: "algorithm-params", Usage: `algorithm parameters, zram style: "level=3 dict=/path"`},
		&cli.StringFlag{Name: "name", Value: "uzram0", Usage: "export name"},
		&cli.StringFlag{Name: "socket", Usage: "unix socket path (default /run/uzram/NAME.sock; none with --ublk)"},
		&cli.BoolFlag{Name: "ublk", Usage: "serve the device as /dev/ublkbN through the kernel's ublk driver (Linux 6.0+, modprobe ublk_drv) instead of on an NBD socket"},
		&cli.IntFlag{Name: "ublk-id", Value: -1, Usage: "with --ublk: the N of /dev/ublkbN (default: the first free one)"},
		&cli.IntFlag{Name: "ublk-queues", Usage: "with --ublk: hardware queues, a serving thread each (0: one per CPU)"},
		&cli.StringFlag{Name: "listen", Usage: "also serve TCP on HOST:PORT (off unless asked)"},
		&cli.StringFlag{Name: "mem-limit", Value: "0", Usage: "most store memory the device may hold (0: no limit)"},
		&cli.StringFlag{Name: "stream-mode", Value: streams.DefaultMode.String(), Usage: "compression streams: percpu or pool"},
		&cli.IntFlag{Name: "streams", Usage: "number of compression streams (0: one per CPU)"},
		&cli.BoolFlag{Name: "no-io-flusher", Usage: "do not set PR_SET_IO_FLUSHER on the server's threads"},
		&cli.BoolFlag{Name: "no-mlock", Usage: "do not lock the server's memory"},
		&cli.BoolFlag{Name: "no-oom-adj", Usage: "do not set oom_score_adj to -1000"},
		&cli.StringFlag{Name: "realtime", Value: "auto", Usage: "when the server's threads run in SCHED_RR, which lets their allocations use the kernel's reserve: auto (while free memory is below --realtime-below), always, never"},
		&cli.StringFlag{Name: "realtime-below", Usage: "free memory under which --realtime auto goes real-time (default: RAM/16, at least 16x vm.min_free_kbytes, at most RAM/2)"},
		&cli.BoolFlag{Name: "no-realtime", Usage: "same as --realtime never"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log connections"},
		&cli.StringFlag{Name: "control", Usage: "control API unix socket (default: control.sock beside the device sockets)"},
		&cli.StringFlag{Name: "socket-dir", Usage: "directory for the sockets of devices created at runtime (default: --socket's, or /run/uzram)"},
		&cli.BoolFlag{Name: "no-device", Usage: "start with no device; create them later with: uzram --find --size SIZE"},
		&cli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics on [HOST:]PORT (a bare port listens on 127.0.0.1)"},
		&cli.StringFlag{Name: "state-file", Usage: "restore the device's contents from PATH at start and save them there at shutdown"},
		&cli.BoolFlag{Name: "takeover", Usage: "replace the daemon running on the same control socket (start it with the same flags) without closing a connection: every device, its contents and its sockets come over; attached devices, swap included, just wait"},
		&cli.StringFlag{Name: "socket-mode", Value: "0600", Usage: "permission bits of device sockets, octal (0660 lets --socket-group attach)"},
		&cli.StringFlag{Name: "socket-group", Usage: "group owning device sockets (name or id)"},
		&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate offered with NBD_OPT_STARTTLS"},
		&cli.StringFlag{Name: "tls-key", Usage: "PEM private key of --tls-cert"},
		&cli.StringFlag{Name: "tls-ca", Usage: "PEM CA: clients must present a certificate it signed"},
		&cli.BoolFlag{Name: "tls-required", Usage: "refuse TCP clients that do not start TLS"},
		&cli.BoolFlag{Name: "read-only", Usage: "export read-only: writes, trims and zeroes fail with EPERM"},
		&cli.StringSliceFlag{Name: "recomp-algorithm", Usage: `recompression algorithm of the first device, zram style: "algo=zstd priority=1 [level=N] [dict=PATH]" (repeatable)`},
		&cli.StringFlag{Name: "auto-recompress", Usage: `recompress idle and huge pages in the background, within a CPU budget: "idle_age=600 interval=60 cpu=0.1 [type=idle,huge] [max_pages=N]" (off unless given; "default" for the defaults)`},
	}
}

// serveAction runs the daemon with the configuration serve's flags give.
func serveAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("serve takes no arguments, got %q", c.Args().First())
	}
	cfg := daemon.Config{
		NoDevice: c.Bool("no-device"), Listen: c.String("listen"), Metrics: c.String("metrics"),
		StateFile: c.String("state-file"), Takeover: c.Bool("takeover"), SocketGroup: c.String("socket-group"),
	}
	var err error
	// The first device is checked as one created at runtime is.
	req := control.CreateRequest{
		Name: c.String("name"), Size: c.String("size"), Algorithm: c.String("algorithm"),
		AlgorithmParams: c.String("algorithm-params"), StreamMode: c.String("stream-mode"),
		Streams: c.Int("streams"), MemLimit: c.String("mem-limit"),
	}
	transportFlags(c, &req)
	if cfg.Device, err = daemon.DeviceConfig(req); err != nil {
		return err
	}
	if cfg.Ublk, err = daemon.UblkOptions(req); err != nil {
		return err
	}
	if cfg.Ublk != nil && cfg.NoDevice {
		return fmt.Errorf("--ublk serves the first device, but --no-device asks for none: create ublk devices with uzram --find --size SIZE --ublk")
	}
	if cfg.Ublk != nil && !cfg.Takeover {
		// Before anything starts: a kernel without ublk is one line.
		ctl, err := ublk.OpenControl()
		if err != nil {
			return err
		}
		ctl.Close()
	}
	if cfg.StateFile != "" && cfg.NoDevice {
		return fmt.Errorf("--state-file holds the first device's contents, but --no-device asks for none")
	}
	if err := socketFlags(c, &cfg); err != nil {
		return err
	}
	if cfg.Server, err = serverFlags(c); err != nil {
		return err
	}
	if cfg.RecompAlgorithms, cfg.AutoRecompress, err = recompressFlags(c); err != nil {
		return err
	}
	rt, rtBelow, err := realtimeFlags(c)
	if err != nil {
		return err
	}
	cfg.Swapsafe = swapsafe.Options{
		IOFlusher: !c.Bool("no-io-flusher"), Mlock: !c.Bool("no-mlock"), OOMScoreAdj: !c.Bool("no-oom-adj"),
		Realtime: rt, RealtimeBelow: rtBelow,
	}
	level := slog.LevelInfo
	if c.Bool("verbose") {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	return daemon.Run(context.Background(), cfg)
}

// socketFlags reads where serve listens: the first device's socket, the
// directory for the sockets of devices created at runtime, the control
// socket, and who may connect.
func socketFlags(c *cli.Context, cfg *daemon.Config) error {
	cfg.Socket = c.String("socket")
	switch {
	case cfg.NoDevice && cfg.Socket != "":
		return fmt.Errorf("--socket names the first device's socket, but --no-device asks for none: use --socket-dir")
	case cfg.Ublk != nil && cfg.Socket != "":
		return fmt.Errorf("--socket names the first device's NBD socket, but --ublk serves it as /dev/ublkbN: give one")
	case !cfg.NoDevice && cfg.Ublk == nil && cfg.Socket == "":
		cfg.Socket = daemon.SocketPath(cfg.Device.Name)
	}
	cfg.SocketDir = c.String("socket-dir")
	if cfg.SocketDir == "" {
		cfg.SocketDir = daemon.SocketDirFor(cfg.Socket)
	}
	// An explicit control socket must work; a defaulted one beside a
	// device socket may be taken by another daemon of the old one-device
	// kind, which is only worth a warning.
	ctl, explicit := controlFlag(c)
	if !explicit {
		ctl = filepath.Join(cfg.SocketDir, "control.sock")
	}
	cfg.Control, cfg.ControlOptional = ctl, !explicit && !cfg.NoDevice
	var err error
	if cfg.SocketMode, err = daemon.ParseSocketMode(c.String("socket-mode")); err != nil {
		return fmt.Errorf("--socket-mode: %w", err)
	}
	return nil
}

// transportFlags reads --ublk, --ublk-id and --ublk-queues into req; the
// daemon checks them (daemon.UblkOptions).
func transportFlags(c *cli.Context, req *control.CreateRequest) {
	if c.Bool("ublk") {
		req.Transport = control.TransportUblk
	}
	if c.IsSet("ublk-id") {
		id := c.Int("ublk-id")
		req.UblkID = &id
	}
	req.UblkQueues = c.Int("ublk-queues")
}

// serverFlags reads the NBD server's options: read-only and TLS.
func serverFlags(c *cli.Context) (nbd.ServerOptions, error) {
	o := nbd.ServerOptions{ReadOnly: c.Bool("read-only"), TLSRequired: c.Bool("tls-required")}
	if c.String("tls-cert") != "" || c.String("tls-key") != "" || c.String("tls-ca") != "" {
		var err error
		if o.TLS, err = nbd.LoadTLSConfig(c.String("tls-cert"), c.String("tls-key"), c.String("tls-ca")); err != nil {
			return o, fmt.Errorf("--tls-cert/--tls-key/--tls-ca: %w", err)
		}
	} else if o.TLSRequired {
		return o, fmt.Errorf("--tls-required needs --tls-cert and --tls-key")
	}
	return o, nil
}

// recompressFlags reads --recomp-algorithm and --auto-recompress.
func recompressFlags(c *cli.Context) ([]recompress.Algorithm, *recompress.Policy, error) {
	var recomp []recompress.Algorithm
	for _, spec := range c.StringSlice("recomp-algorithm") {
		a, err := recompress.ParseAlgorithm(spec)
		if err != nil {
			return nil, nil, fmt.Errorf("--recomp-algorithm: %w", err)
		}
		recomp = append(recomp, a)
	}
	spec := c.String("auto-recompress")
	if spec == "" {
		return recomp, nil, nil
	}
	if spec == "default" {
		spec = ""
	}
	p, err := recompress.ParsePolicy(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("--auto-recompress: %w", err)
	}
	return recomp, &p, nil
}

// realtimeFlags reads --realtime, --realtime-below and --no-realtime.
func realtimeFlags(c *cli.Context) (swapsafe.RealtimeMode, uint64, error) {
	rt, err := swapsafe.ParseRealtimeMode(c.String("realtime"))
	if err != nil {
		return 0, 0, fmt.Errorf("--realtime: %w", err)
	}
	if c.Bool("no-realtime") {
		if c.IsSet("realtime") && rt != swapsafe.RealtimeNever {
			return 0, 0, fmt.Errorf("--no-realtime contradicts --realtime %s", rt)
		}
		rt = swapsafe.RealtimeNever
	}
	var below uint64
	if s := c.String("realtime-below"); s != "" {
		if rt != swapsafe.RealtimeAuto {
			return 0, 0, fmt.Errorf("--realtime-below applies only to --realtime auto, not %s", rt)
		}
		n, err := sizes.Parse(s)
		if err != nil {
			return 0, 0, fmt.Errorf("--realtime-below: %w", err)
		}
		if n == 0 {
			return 0, 0, fmt.Errorf("--realtime-below: 0 would never go real-time; use --realtime never")
		}
		below = uint64(n)
	}
	return rt, below, nil
}

// waitDaemon waits until the daemon answers, or gives up after d.
func waitDaemon(cl *control.Client, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := cl.List()
		if !errors.Is(err, control.ErrNoDaemon) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// usageError keeps flag mistakes to one line, like every other error.
func usageError(c *cli.Context, err error, _ bool) error {
	return fmt.Errorf("%w (see uzram --help)", err)
}

// controlFlag finds --control wherever it was given (before or after the
// subcommand), and whether it was given at all.
func controlFlag(c *cli.Context) (string, bool) {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet("control") {
			return ctx.String("control"), true
		}
	}
	return control.DefaultSocket, false
}

func client(c *cli.Context) *control.Client {
	path, _ := controlFlag(c)
	return control.NewClient(path)
}

// listFlags are zramctl's options, plus --json and --control.
func listFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "control", Value: control.DefaultSocket, EnvVars: []string{"UZRAM_CONTROL"}, Usage: "the daemon's control socket"},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "columns to print, comma-separated; +LIST adds to the defaults (" + strings.Join(zramctl.AllColumns(), ", ") + ")"},
		&cli.BoolFlag{Name: "output-all", Usage: "print every column"},
		&cli.BoolFlag{Name: "raw", Usage: "raw output: no alignment"},
		&cli.BoolFlag{Name: "bytes", Aliases: []string{"b"}, Usage: "sizes in bytes rather than 1.2G"},
		&cli.BoolFlag{Name: "noheadings", Aliases: []string{"n"}, Usage: "no header line"},
		&cli.BoolFlag{Name: "json", Aliases: []string{"J"}, Usage: "JSON output"},
		&cli.BoolFlag{Name: "find", Aliases: []string{"f"}, Usage: "create the first free uzramN and print its name"},
		&cli.StringFlag{Name: "size", Aliases: []string{"s"}, Usage: "size of the device to create, like 4G"},
		&cli.StringFlag{Name: "algorithm", Aliases: []string{"a"}, Usage: "compression algorithm: " + strings.Join(zcomp.Names(), ", ")},
		&cli.StringFlag{Name: "algorithm-params", Usage: `algorithm parameters, zram style: "level=3 dict=/path"`},
		&cli.IntFlag{Name: "streams", Aliases: []string{"t"}, Usage: "number of compression streams (0: one per CPU)"},
		&cli.StringFlag{Name: "mem-limit", Usage: "store memory limit of the device to create (0: none)"},
		&cli.BoolFlag{Name: "ublk", Usage: "serve the device to create as /dev/ublkbN (the kernel's ublk driver) instead of on an NBD socket"},
		&cli.IntFlag{Name: "ublk-id", Value: -1, Usage: "with --ublk: the N of /dev/ublkbN (default: the first free one)"},
		&cli.IntFlag{Name: "ublk-queues", Usage: "with --ublk: hardware queues (0: one per CPU)"},
		&cli.BoolFlag{Name: "reset", Aliases: []string{"r"}, Usage: "free the named devices"},
	}
}

// listAction is zramctl: list, --find/--size create, --reset free.
func listAction(c *cli.Context) error {
	cl := client(c)
	args := c.Args().Slice()
	creating := c.Bool("find") || c.IsSet("size")
	switch {
	case c.Bool("reset"):
		if creating {
			return fmt.Errorf("--reset cannot be combined with --find or --size")
		}
		if len(args) == 0 {
			return fmt.Errorf("--reset needs the devices to free, like uzram --reset uzram0")
		}
		for _, name := range args {
			if err := cl.Remove(name); err != nil {
				return err
			}
		}
		return nil
	case creating:
		if !c.IsSet("size") {
			return fmt.Errorf("--find needs --size, like uzram --find --size 4G")
		}
		var name string
		switch {
		case c.Bool("find") && len(args) > 0:
			return fmt.Errorf("--find picks the name itself; give either --find or a NAME, not both")
		case !c.Bool("find") && len(args) != 1:
			return fmt.Errorf("--size creates one device: give --find or one NAME")
		case len(args) == 1:
			name = args[0]
		}
		req := control.CreateRequest{
			Name: name, Size: c.String("size"), Algorithm: c.String("algorithm"),
			AlgorithmParams: c.String("algorithm-params"), Streams: c.Int("streams"), MemLimit: c.String("mem-limit"),
		}
		transportFlags(c, &req)
		d, err := cl.Create(req)
		if err != nil {
			return err
		}
		if c.Bool("find") {
			fmt.Println(d.Name)
		}
		return nil
	}
	opts := zramctl.ListOptions{Raw: c.Bool("raw"), Bytes: c.Bool("bytes"), NoHeadings: c.Bool("noheadings"), JSON: c.Bool("json")}
	switch {
	case c.Bool("output-all") && c.IsSet("output"):
		return fmt.Errorf("--output and --output-all: give one")
	case c.Bool("output-all"):
		opts.Columns = zramctl.AllColumns()
	case c.IsSet("output"):
		cols, err := zramctl.ParseColumns(c.String("output"))
		if err != nil {
			return fmt.Errorf("--output: %w", err)
		}
		opts.Columns = cols
	}
	var devs []control.Device
	if len(args) == 0 {
		all, err := cl.List()
		if err != nil {
			return err
		}
		devs = all
	}
	for _, name := range args {
		d, err := cl.Get(name)
		if err != nil {
			return err
		}
		devs = append(devs, d)
	}
	return zramctl.WriteList(os.Stdout, devs, opts)
}

// knobCommand is one knob of package knob's table: `uzram CMD NAME VALUE...`
// writes the value.
func knobCommand(k knob.Knob) *cli.Command {
	name := k.Command()
	nargs := 1
	if k.ArgsUsage == "" {
		nargs = 0
	}
	cmd := &cli.Command{
		Name: name, Usage: k.Usage, ArgsUsage: "NAME " + k.ArgsUsage, OnUsageError: usageError, BashComplete: completeDevice,
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) < 1+nargs {
				return fmt.Errorf("%s needs NAME %s", name, k.ArgsUsage)
			}
			if nargs == 0 && len(args) > 1 {
				return fmt.Errorf("%s takes only NAME, got %q too", name, args[1])
			}
			v, err := k.ValueOf(args[1:])
			if err != nil {
				return err
			}
			if k.Progress && (isTerminal(os.Stderr) || c.Bool("progress")) {
				return setWithBar(client(c), args[0], k.Name, v)
			}
			var res string
			if k.Long {
				res, err = client(c).SetKnobProgress(args[0], k.Name, v, nil)
			} else {
				res, err = client(c).SetKnob(args[0], k.Name, v)
			}
			if res != "" {
				fmt.Println(res)
			}
			return err
		},
	}
	if k.Progress {
		cmd.Flags = []cli.Flag{&cli.BoolFlag{Name: "progress", Usage: "show progress even when stderr is not a terminal"}}
	}
	return cmd
}

// setWithBar writes a knob that reports progress (recompress), with a
// progress bar on stderr while it runs.
func setWithBar(cl *control.Client, name, knob, value string) error {
	bar := recompress.NewBar(os.Stderr, true)
	var last recompress.Result
	res, err := cl.SetKnobProgress(name, knob, value, func(raw json.RawMessage) {
		if json.Unmarshal(raw, &last) == nil {
			bar.Update(last)
		}
	})
	if err != nil {
		if last.Done > 0 {
			fmt.Fprintln(os.Stderr)
		}
		return err
	}
	fmt.Fprintf(os.Stderr, "\r%s\x1b[K\n", recompress.FormatProgress(last, 32))
	fmt.Println(res)
	return nil
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func statUsage(file string) string {
	if file == "recomp_stat" {
		return "print recompression figures (uzram's): incompressible pages; pages and bytes at priority 0..3; " +
			"runs background_runs scanned attempted recompressed skipped incompressible failed bytes_saved mem_saved cpu_ms"
	}
	return "print " + file + " as zram does"
}

func statCommand(file string) *cli.Command {
	return &cli.Command{
		Name: strings.ReplaceAll(file, "_", "-"), Usage: statUsage(file), ArgsUsage: "NAME", OnUsageError: usageError, BashComplete: completeDevice,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("%s needs one device NAME", c.Command.Name)
			}
			text, err := client(c).StatFile(c.Args().First(), file)
			if err != nil {
				return err
			}
			fmt.Print(text)
			return nil
		},
	}
}

func clientCommands() []*cli.Command {
	var cmds []*cli.Command
	for _, k := range knob.All {
		cmds = append(cmds, knobCommand(k))
	}
	for _, file := range control.StatFiles {
		cmds = append(cmds, statCommand(file))
	}
	return append(cmds, attachCommand(), detachCommand(), swaponCommand(), swapoffCommand(), setupCommand(), stopCommand())
}

func stopCommand() *cli.Command {
	return &cli.Command{
		Name:         "stop",
		Usage:        "stop the daemon as SIGTERM does: refused while a ublk device is active swap or mounted, unless --force",
		OnUsageError: usageError,
		Flags:        []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "stop even with a ublk device in use: its swap or filesystem I/O then fails"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("stop takes no arguments, got %q", c.Args().First())
			}
			return client(c).Stop(c.Bool("force"))
		},
	}
}

func attachCommand() *cli.Command {
	return &cli.Command{
		Name: "attach", Usage: "attach a device to /dev/nbdN with nbd-client and print the node", ArgsUsage: "NAME [/dev/nbdN]",
		OnUsageError: usageError, BashComplete: completeDevice,
		Flags: []cli.Flag{&cli.BoolFlag{Name: "swap", Usage: "attach for swap (nbd-client -swap)"}},
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 || c.NArg() > 2 {
				return fmt.Errorf("attach needs NAME and optionally /dev/nbdN")
			}
			nbd, err := swapsetup.Attach(client(c), c.Args().Get(0), c.Args().Get(1), c.Bool("swap"))
			if err != nil {
				return err
			}
			fmt.Println(nbd)
			return nil
		},
	}
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name: "detach", Usage: "disconnect a device from its /dev/nbdN (nbd-client -d)", ArgsUsage: "NAME|/dev/nbdN",
		OnUsageError: usageError, BashComplete: completeDevice,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("detach needs NAME or /dev/nbdN")
			}
			_, _, err := swapsetup.Detach(client(c), c.Args().First())
			return err
		},
	}
}

func swaponCommand() *cli.Command {
	return &cli.Command{
		Name:         "swapon",
		Usage:        "create a device, attach it (or serve it as /dev/ublkbN with --ublk), mkswap and swapon --discard=pages, in one step; prints NAME and its node",
		ArgsUsage:    "[NAME]",
		OnUsageError: usageError,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "size", Aliases: []string{"s"}, Usage: "device size, like 4G (required)"},
			&cli.IntFlag{Name: "priority", Aliases: []string{"p"}, Value: -1, Usage: "swap priority (default: the kernel's)"},
			&cli.StringFlag{Name: "algorithm", Aliases: []string{"a"}, Usage: "compression algorithm: " + strings.Join(zcomp.Names(), ", ")},
			&cli.StringFlag{Name: "algorithm-params", Usage: `algorithm parameters: "level=3"`},
			&cli.StringSliceFlag{Name: "recomp-algorithm", Usage: `recompression algorithm for priority 1, 2, 3 (repeat): "zstd" or "zstd level=9"`},
			&cli.IntFlag{Name: "streams", Aliases: []string{"t"}, Usage: "number of compression streams (0: one per CPU)"},
			&cli.StringFlag{Name: "mem-limit", Usage: "store memory limit (0: none)"},
			&cli.BoolFlag{Name: "ublk", Usage: "serve it as /dev/ublkbN through the kernel's ublk driver: no nbd-client, no socket"},
			&cli.IntFlag{Name: "ublk-id", Value: -1, Usage: "with --ublk: the N of /dev/ublkbN (default: the first free one)"},
			&cli.IntFlag{Name: "ublk-queues", Usage: "with --ublk: hardware queues (0: one per CPU)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return fmt.Errorf("swapon takes at most one NAME, got %d", c.NArg())
			}
			if c.String("size") == "" {
				return fmt.Errorf("swapon needs --size, like uzram swapon --size 4G")
			}
			req := control.CreateRequest{
				Name: c.Args().First(), Size: c.String("size"), Algorithm: c.String("algorithm"),
				AlgorithmParams: c.String("algorithm-params"), Streams: c.Int("streams"), MemLimit: c.String("mem-limit"),
			}
			transportFlags(c, &req)
			name, nbd, err := swapsetup.SwapOn(client(c), swapsetup.SwapOptions{
				Create: req, Priority: c.Int("priority"), Recomp: c.StringSlice("recomp-algorithm"),
			})
			if err != nil {
				return err
			}
			fmt.Println(name, nbd)
			return nil
		},
	}
}

func swapoffCommand() *cli.Command {
	return &cli.Command{
		Name: "swapoff", Usage: "swapoff, detach and free a device made by swapon", ArgsUsage: "NAME", OnUsageError: usageError,
		BashComplete: completeDevice,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("swapoff needs one device NAME")
			}
			_, err := swapsetup.SwapOff(client(c), c.Args().First())
			return err
		},
	}
}

func setupCommand() *cli.Command {
	return &cli.Command{
		Name:         "setup",
		Usage:        "set up swap devices from a config file (zram-generator style)",
		OnUsageError: usageError,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Value: "/etc/uzram.conf", Usage: "config file"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print what would be set up, change nothing"},
			&cli.DurationFlag{Name: "wait", Value: 30 * time.Second, Usage: "how long to wait for the daemon to come up (at boot it starts alongside)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("setup takes no arguments, got %q", c.Args().First())
			}
			cfgs, err := swapsetup.LoadConfig(c.String("config"))
			if err != nil {
				return err
			}
			ram, err := hostmem.RAMMiB()
			if err != nil {
				return err
			}
			// Every size first: a bad section must stop setup before any
			// device exists.
			size := make([]int64, len(cfgs))
			for i := range cfgs {
				if size[i], err = cfgs[i].SizeBytes(ram); err != nil {
					return fmt.Errorf("%s: [%s]: %w", c.String("config"), cfgs[i].Name, err)
				}
			}
			cl := client(c)
			if !c.Bool("dry-run") {
				if err := waitDaemon(cl, c.Duration("wait")); err != nil {
					return err
				}
			}
			var devs []swapsetup.SwapOptions
			for i, sc := range cfgs {
				algo := sc.Algorithm
				if algo == "" {
					algo = zcomp.Default
				}
				if c.Bool("dry-run") {
					fmt.Printf("%s size=%s algorithm=%s params=%q recomp=%q swap-priority=%d transport=%s\n",
						sc.Name, sizes.Human(size[i]), algo, sc.AlgorithmParams, strings.Join(sc.Recomp, ","), sc.Priority, cmp.Or(sc.Transport, control.TransportNBD))
					continue
				}
				devs = append(devs, swapsetup.SwapOptions{
					Create: control.CreateRequest{
						Name: sc.Name, Size: strconv.FormatInt(size[i], 10), Algorithm: algo,
						AlgorithmParams: sc.AlgorithmParams, Streams: sc.Streams, MemLimit: sc.MemLimit,
						Transport: sc.Transport,
					},
					Priority: sc.Priority,
					Recomp:   sc.Recomp,
				})
			}
			// A failed section undoes the ones before it (swapsetup.SetUp).
			return swapsetup.SetUp(cl, devs, os.Stdout)
		},
	}
}
