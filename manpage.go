package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/uzram/uzram/clidoc"
	"github.com/uzram/uzram/version"
)

// manCommand prints uzram(8), made from the CLI's definition (package
// clidoc) and the prose below; hack/install.sh installs it. Hidden: it is
// for packaging.
func manCommand() *cli.Command {
	return &cli.Command{
		Name: "man", Usage: "print the uzram(8) man page (man(7) markup)", Hidden: true,
		Action: func(c *cli.Context) error {
			v := version.Get()
			date := ""
			if len(v.Time) >= 10 {
				date = v.Time[:10]
			}
			fmt.Print(clidoc.Man(c.App, clidoc.Page{
				Section: 8, Date: date, Source: "uzram " + v.Version,
				Description: manDescription, After: manSections,
			}))
			return nil
		},
	}
}

const manDescription = `uzram is the Linux kernel's zram rebuilt in userspace: RAM block devices whose 4 KiB pages are compressed in memory (lz4 by default; lz4hc, zstd and deflate too). A daemon, uzram serve, holds the devices and serves each over NBD on a unix socket, which nbd-client attaches as /dev/nbdN, or as /dev/ublkbN through the kernel's ublk driver. Made swap with discard, freed swap slots give their memory back, as with zram.

Without a command, uzram lists the daemon's devices as zramctl(8) does, creates one (--find, --size) or frees them (--reset). The commands run the daemon (serve), write zram's sysfs attributes (mem-limit, compact, recompress...), print its stats files (mm-stat, io-stat, debug-stat), and set devices up as swap in one step (swapon, swapoff, setup). Every command but serve talks to the daemon over its control socket, /run/uzram/control.sock unless --control says otherwise.

uzram swapon, and each device of uzram setup, either succeeds whole or undoes what it did: a failed step resets the device it created and detaches it, and a failed setup also takes down the devices it made before.`

var manSections = []clidoc.Section{
	{Title: "Systemd", Text: `uzram.service runs uzram serve --no-device. It is of Type=notify: the daemon reports READY=1 once every socket listens, so uzram-swap.service, which runs uzram setup --config /etc/uzram.conf, starts only once the daemon serves. systemctl status uzram shows the devices and memory (STATUS=). systemctl reload uzram re-executes the installed binary in place (SIGUSR2), every device, its contents and its connections kept: the way to upgrade under swap.

systemctl stop uzram stops uzram-swap.service first, which swaps every device off, then sends SIGTERM. The daemon refuses SIGTERM while a ublk device is still swap or mounted; the stop then times out and the daemon is left running (SendSIGKILL=no), since killing it would lose the swapped-out pages. uzram stop --force stops it anyway.`},
	{Title: "Files", Text: `- /etc/uzram.conf: the devices uzram setup makes, in zram-generator's style: one [section] per device, zram-size (an expression of ram, in MiB), compression-algorithm, swap-priority, mem-limit, streams, transport.

- /run/uzram/control.sock: the daemon's control socket (mode 0600); /run/uzram/NAME.sock: each device's NBD socket.

- uzram.service, uzram-swap.service: the systemd units.`},
	{Title: "Exit status", Text: `0 on success; 1 on any error, which is printed as one line on standard error.`},
	{Title: "Examples", Text: `Compressed swap of 4 GiB in one step, and back:

  uzram swapon --size 4G --priority 100 --algorithm lz4 --recomp-algorithm zstd
  uzram swapoff uzram0

At boot, from /etc/uzram.conf:

  systemctl enable --now uzram uzram-swap
  uzram
  swapon --show

The zramctl way, then by hand:

  uzram --find --size 1G --algorithm zstd
  uzram attach --swap uzram1
  mkswap /dev/nbd0 && swapon --discard=pages /dev/nbd0`},
	{Title: "See also", Text: `zramctl(8), nbd-client(8), swapon(8), mkswap(8), systemd.service(5)`},
}
