package daemon

import (
	"debug/buildinfo"

	"github.com/uzram/uzram/version"
)

// Versions in the logs: a daemon says which uzram it is when it starts,
// and both sides of a takeover or re-exec say which uzram is on the other
// side, so an upgrade shows in the log as old -> new.

// thisVersion is this binary's version line.
func thisVersion() string { return version.Get().String() }

// fileVersion is the version line of the binary at path (the image a
// re-exec is about to run), read from its build information, or why not.
func fileVersion(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return version.FromBuildInfo(bi).String()
}
