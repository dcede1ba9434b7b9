// Command nbdwriter is the client TestKilledPipelinedWriter kills with
// SIGKILL: it writes 8 KiB blocks with many requests in flight and records
// each acknowledged block in a file, until it is killed or has covered its
// range.
//
//	nbdwriter SOCKET EXPORT ACKFILE BLOCKS
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/uzram/uzram/nbdclient"
)

// Block returns block i's contents; the test checks them with the same code.
func Block(i int) []byte {
	b := make([]byte, 8192)
	for j := range b {
		b[j] = byte(i*131+j/7) ^ byte(j>>9) ^ byte(i>>8)
	}
	return b
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: nbdwriter SOCKET EXPORT ACKFILE BLOCKS")
		os.Exit(2)
	}
	blocks, _ := strconv.Atoi(os.Args[4])
	c, err := nbdclient.Dial("unix", os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ack, err := os.OpenFile(os.Args[3], os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= blocks {
					return
				}
				if err := c.WriteAt(Block(i), uint64(i)*8192); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				fmt.Fprintf(ack, "%d\n", i) // one write(2): whole lines only
			}
		}()
	}
	wg.Wait()
}
