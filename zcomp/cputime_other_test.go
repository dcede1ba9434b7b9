//go:build !linux

package zcomp

import "time"

// threadCPU cannot be read here; see cputime_linux_test.go.
func threadCPU() time.Duration { return -1 }
