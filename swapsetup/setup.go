package swapsetup

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/uzram/uzram/control"
	"github.com/uzram/uzram/sizes"
)

// SetUp is `uzram setup`: it makes each device swap (SwapOn) in order,
// leaving alone a device that exists already. If one fails, the devices
// this run made before it are swapped off and reset in reverse order
// (SwapOff), so a failed setup leaves the host as it found it; the error
// names the failed section and what was undone. It writes a line per
// device to out.
func SetUp(c *control.Client, devs []SwapOptions, out io.Writer) error {
	var made []string
	for _, o := range devs {
		if _, err := c.Get(o.Create.Name); err == nil {
			fmt.Fprintf(out, "%s exists, left as it is\n", o.Create.Name)
			continue
		} else if !errors.Is(err, control.ErrNotFound) {
			return undoSetUp(c, made, err)
		}
		name, node, err := SwapOn(c, o)
		if err != nil {
			return undoSetUp(c, made, fmt.Errorf("[%s]: %w", o.Create.Name, err))
		}
		made = append(made, name)
		size := o.Create.Size
		if n, err := sizes.Parse(size); err == nil {
			size = sizes.Human(n)
		}
		fmt.Fprintf(out, "%s on %s, %s, swap priority %d\n", name, node, size, o.Priority)
	}
	return nil
}

// undoSetUp swaps off and resets the devices made, last first, and adds
// what it did to err.
func undoSetUp(c *control.Client, made []string, err error) error {
	if len(made) == 0 {
		return err
	}
	var undone []string
	var failed []error
	for i := len(made) - 1; i >= 0; i-- {
		if _, uerr := SwapOff(c, made[i]); uerr != nil {
			failed = append(failed, fmt.Errorf("%s: %w", made[i], uerr))
		} else {
			undone = append(undone, made[i])
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w; undoing the devices made before failed: %w", err, errors.Join(failed...))
	}
	return fmt.Errorf("%w; undone: %s", err, strings.Join(undone, ", "))
}
