// Command uzram is a compressed RAM block device served over NBD: the
// kernel's zram, in userspace. main.go is wiring only: flags to configs.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/uzram/uzram/blockdev"
	"github.com/uzram/uzram/daemon"
	"github.com/uzram/uzram/sizes"
	"github.com/uzram/uzram/streams"
	"github.com/uzram/uzram/swapsafe"
	"github.com/uzram/uzram/zcomp"
)

func main() {
	app := &cli.App{
		Name:  "uzram",
		Usage: "compressed RAM block devices served over NBD (userspace zram)",
		Commands: []*cli.Command{
			serveCommand(),
		},
		ExitErrHandler: func(c *cli.Context, err error) {},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "uzram: %v\n", err)
		os.Exit(1)
	}
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the NBD server (default: one 1 GiB lz4 device uzram0 on /run/uzram/uzram0.sock)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "size", Value: "1G", Usage: "device size in bytes or with a K/M/G/T suffix, rounded up to 4 KiB"},
			&cli.StringFlag{Name: "algorithm", Value: zcomp.Default, Usage: "compression algorithm: lz4, lz4hc, zstd, deflate"},
			&cli.StringFlag{Name: "algorithm-params", Usage: `algorithm parameters, zram style: "level=3 dict=/path"`},
			&cli.StringFlag{Name: "name", Value: "uzram0", Usage: "export name"},
			&cli.StringFlag{Name: "socket", Usage: "unix socket path (default /run/uzram/NAME.sock)"},
			&cli.StringFlag{Name: "listen", Usage: "also serve TCP on HOST:PORT (off unless asked)"},
			&cli.StringFlag{Name: "mem-limit", Value: "0", Usage: "most store memory the device may hold (0: no limit)"},
			&cli.StringFlag{Name: "stream-mode", Value: streams.DefaultMode.String(), Usage: "compression streams: percpu or pool"},
			&cli.IntFlag{Name: "streams", Usage: "number of compression streams (0: one per CPU)"},
			&cli.BoolFlag{Name: "no-io-flusher", Usage: "do not set PR_SET_IO_FLUSHER on the server's threads"},
			&cli.BoolFlag{Name: "no-mlock", Usage: "do not lock the server's memory"},
			&cli.BoolFlag{Name: "no-oom-adj", Usage: "do not set oom_score_adj to -1000"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log connections"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("serve takes no arguments, got %q", c.Args().First())
			}
			size, err := sizes.Parse(c.String("size"))
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			if size == 0 {
				return fmt.Errorf("--size: a device needs at least one page (4K)")
			}
			limit, err := sizes.Parse(c.String("mem-limit"))
			if err != nil {
				return fmt.Errorf("--mem-limit: %w", err)
			}
			if _, err := zcomp.Lookup(c.String("algorithm")); err != nil {
				return fmt.Errorf("--algorithm: %w", err)
			}
			params, err := zcomp.ParseParams(c.String("algorithm-params"))
			if err != nil {
				return fmt.Errorf("--algorithm-params: %w", err)
			}
			mode, err := streams.ParseMode(c.String("stream-mode"))
			if err != nil {
				return fmt.Errorf("--stream-mode: %w", err)
			}
			if c.Int("streams") < 0 {
				return fmt.Errorf("--streams: want 0 (one per CPU) or more, got %d", c.Int("streams"))
			}
			name := c.String("name")
			socket := c.String("socket")
			if socket == "" {
				socket = daemon.SocketPath(name)
			}
			level := slog.LevelInfo
			if c.Bool("verbose") {
				level = slog.LevelDebug
			}
			return daemon.Run(context.Background(), daemon.Config{
				Device: blockdev.Config{
					Name: name, Size: sizes.RoundPage(size), Algorithm: c.String("algorithm"), Params: params,
					StreamMode: mode, Streams: c.Int("streams"), MemLimit: limit,
				},
				Socket: socket,
				Listen: c.String("listen"),
				Swapsafe: swapsafe.Options{
					IOFlusher: !c.Bool("no-io-flusher"), Mlock: !c.Bool("no-mlock"), OOMScoreAdj: !c.Bool("no-oom-adj"),
				},
				Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
			})
		},
	}
}
