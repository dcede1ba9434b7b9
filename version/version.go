// Package version says which uzram this is: the module version and the
// commit the binary was built from, as the Go toolchain recorded them
// (debug.ReadBuildInfo). A build from a git checkout carries the commit and
// a version derived from it (a tag, or a pseudo-version such as
// v0.0.0-20261206082500-4eb7b97abc12, "+dirty" with uncommitted changes);
// a build without version control says "(devel)" and "unknown".
package version

import (
	"runtime/debug"
	"strings"
)

// Info is what a binary knows about its own build. Its JSON is what the
// control API's GET /v1/version returns.
type Info struct {
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Time     string `json:"commit_time,omitempty"` // the commit's time, RFC 3339
	Modified bool   `json:"modified,omitempty"`    // built with uncommitted changes
	Go       string `json:"go"`
}

// Get reads this binary's build information.
func Get() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "(devel)", Commit: "unknown", Go: "unknown"}
	}
	return FromBuildInfo(bi)
}

// FromBuildInfo reads the version from build information: this binary's,
// or another's (debug/buildinfo.ReadFile).
func FromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, Commit: "unknown", Go: bi.GoVersion}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// String is the one line `uzram --version` prints and the logs carry:
// "v0.0.0-20261206082500-4eb7b97abc12 commit 4eb7b97abc12... (2026-12-06T08:25:00Z, modified) go1.26.8".
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version + " commit " + i.Commit)
	var notes []string
	if i.Time != "" {
		notes = append(notes, i.Time)
	}
	if i.Modified {
		notes = append(notes, "modified")
	}
	if len(notes) > 0 {
		b.WriteString(" (" + strings.Join(notes, ", ") + ")")
	}
	if i.Go != "" {
		b.WriteString(" " + i.Go)
	}
	return b.String()
}
