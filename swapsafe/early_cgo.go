//go:build linux && cgo

package swapsafe

/*
#include <errno.h>
#include <string.h>
#include <sys/prctl.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

// -1: not tried (not `serve`, or --no-io-flusher); 0: set; else the errno.
static int uzram_early_io_flusher = -1;

// A C constructor runs on the process's first thread before the Go runtime
// starts any other, and the kernel copies PF_MEMALLOC_NOIO and
// PF_LOCAL_THROTTLE into every thread cloned afterwards: so with cgo, where
// AllThreadsSyscall is refused, setting the flag here still covers every
// thread. Only `serve` asks for it, so the arguments decide.
__attribute__((constructor)) static void uzram_set_io_flusher(int argc, char **argv, char **envp) {
	int serve = 0;
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--no-io-flusher", 15) == 0 || strncmp(argv[i], "-no-io-flusher", 14) == 0)
			return;
		if (strcmp(argv[i], "serve") == 0)
			serve = 1;
	}
	if (!serve)
		return;
	uzram_early_io_flusher = prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0 ? 0 : errno;
}

static int uzram_early_io_flusher_result(void) { return uzram_early_io_flusher; }
*/
import "C"

import "syscall"

// cgoBuild: this binary links cgo, so only the constructor can flag every thread.
const cgoBuild = true

// earlyIOFlusher reports what the constructor did: tried is false when it
// did not run for this command line; err is its prctl error.
func earlyIOFlusher() (tried bool, err error) {
	switch r := C.uzram_early_io_flusher_result(); r {
	case -1:
		return false, nil
	case 0:
		return true, nil
	default:
		return true, syscall.Errno(r)
	}
}
