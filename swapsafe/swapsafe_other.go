//go:build !linux

package swapsafe

import "fmt"

// Apply returns one ErrUnsupported per requested step: these tools are
// Linux's, and a server elsewhere runs without them.
func Apply(opts Options) []error {
	var errs []error
	if opts.IOFlusher {
		errs = append(errs, fmt.Errorf("swapsafe: PR_SET_IO_FLUSHER: %w", ErrUnsupported))
	}
	if opts.Mlock {
		errs = append(errs, fmt.Errorf("swapsafe: mlockall: %w", ErrUnsupported))
	}
	if opts.OOMScoreAdj {
		errs = append(errs, fmt.Errorf("swapsafe: oom_score_adj: %w", ErrUnsupported))
	}
	if opts.Realtime != RealtimeNever {
		errs = append(errs, fmt.Errorf("swapsafe: SCHED_RR: %w", ErrUnsupported))
	}
	return errs
}

// ReadThreadFlags has no source outside Linux.
func ReadThreadFlags() (ThreadFlags, error) {
	return nil, ErrUnsupported
}

// ThreadPolicies has no source outside Linux.
func ThreadPolicies() (map[int]int, error) {
	return nil, ErrUnsupported
}
