package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/uzram/uzram", Version: "v0.0.0-20261206082500-4eb7b97abc12+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "4eb7b97abc1234567890abcdef1234567890abcd"},
			{Key: "vcs.time", Value: "2026-12-06T08:25:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	i := FromBuildInfo(bi)
	want := "v0.0.0-20261206082500-4eb7b97abc12+dirty commit 4eb7b97abc1234567890abcdef1234567890abcd (2026-12-06T08:25:00Z, modified) go1.26.8"
	if i.String() != want {
		t.Errorf("got  %q\nwant %q", i.String(), want)
	}
	plain := FromBuildInfo(&debug.BuildInfo{GoVersion: "go1.26.8"})
	if plain.String() != "(devel) commit unknown go1.26.8" {
		t.Errorf("no VCS: %q", plain.String())
	}
}

// TestGet: the test binary has build information; its commit is whatever
// the toolchain recorded, but the line always has both parts.
func TestGet(t *testing.T) {
	s := Get().String()
	if !strings.Contains(s, " commit ") || !strings.Contains(s, "go1.") {
		t.Errorf("version line %q lacks the commit or the Go version", s)
	}
}
