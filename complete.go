package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// Shell completion: contrib/completion's bash and zsh scripts run
// `uzram WORDS... --generate-bash-completion`, and urfave/cli calls the
// command's BashComplete with the words before the cursor.

// completingFlag says whether the word being completed starts with '-'
// (the scripts then pass it as the last word), as urfave/cli's own
// completion decides.
func completingFlag() bool {
	return len(os.Args) > 2 && strings.HasPrefix(os.Args[len(os.Args)-2], "-")
}

// completeRoot completes `uzram <TAB>`: the commands, and the devices
// (`uzram NAME` lists one); after a dash, the options.
func completeRoot(c *cli.Context) {
	cli.DefaultAppComplete(c)
	if !completingFlag() {
		printDevices(c)
	}
}

// completeDevice completes a command whose first argument is a device
// NAME: the running daemon's devices, or the command's options after a
// dash.
func completeDevice(c *cli.Context) {
	if completingFlag() {
		cli.DefaultCompleteWithFlags(c.Command)(c)
		return
	}
	if c.NArg() == 0 {
		printDevices(c)
	}
}

// printDevices prints the daemon's device names, one a line; nothing when
// no daemon answers.
func printDevices(c *cli.Context) {
	devs, err := client(c).List()
	if err != nil {
		return
	}
	for _, d := range devs {
		fmt.Println(d.Name)
	}
}
