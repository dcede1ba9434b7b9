package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestManPage: `uzram man` is uzram(8), made from the CLI's definition: it
// renders without a groff warning, and names every command and option that
// --help shows.
func TestManPage(t *testing.T) {
	need(t, "groff")
	page := cliOK(t, nil, "man")
	path := filepath.Join(t.TempDir(), "uzram.8")
	os.WriteFile(path, []byte(page), 0o644)
	// -ww: every warning; lintian checks pages the same way.
	out, err := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", path).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("groff warns about the man page: %v\n%s", err, out)
	}
	text, err := exec.Command("groff", "-man", "-Tascii", "-P-cbou", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	rendered := string(text)
	help := cliOK(t, nil, "--help")
	for _, line := range strings.Split(help[strings.Index(help, "COMMANDS:"):], "\n")[1:] {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(line, "   ") {
			break
		}
		cmd := strings.TrimSuffix(f[0], ",")
		if cmd == "help" {
			continue
		}
		if !strings.Contains(rendered, "uzram "+cmd) {
			t.Errorf("the man page has no section for %s", cmd)
		}
		cmdHelp := cliOK(t, nil, cmd, "--help")
		for _, opt := range options(cmdHelp) {
			if !strings.Contains(rendered, opt) {
				t.Errorf("the man page lacks %s's %s", cmd, opt)
			}
		}
	}
	for _, opt := range options(help) {
		if !strings.Contains(rendered, opt) {
			t.Errorf("the man page lacks the option %s", opt)
		}
	}
	for _, want := range []string{"SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT", "UZRAM_CONTROL", "FILES", "/etc/uzram.conf", "EXAMPLES", "SEE ALSO"} {
		if !strings.Contains(rendered, want) {
			t.Errorf("the man page lacks %q", want)
		}
	}
}

// options lists the --long options a --help text shows.
func options(help string) []string {
	var out []string
	for _, w := range strings.Fields(help) {
		w = strings.TrimRight(w, ",")
		if strings.HasPrefix(w, "--") && len(w) > 2 && !strings.ContainsAny(w, "=.\"") && !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

// TestCompletion: `uzram <TAB>` offers the commands and the running
// daemon's devices, a command taking a device offers the devices, and a
// dash offers the command's options; through contrib's bash script too.
func TestCompletion(t *testing.T) {
	s := startServer(t, "--size", "4M", "--name", "swapdev")
	complete := func(words ...string) []string {
		t.Helper()
		out := cliOK(t, s, append(words, "--generate-bash-completion")...)
		return strings.Fields(out)
	}
	root := complete()
	for _, want := range []string{"serve", "swapon", "swapoff", "mem-limit", "setup", "swapdev"} {
		if !slices.Contains(root, want) {
			t.Errorf("uzram <TAB> offers %v, without %s", root, want)
		}
	}
	if slices.Contains(root, "man") {
		t.Errorf("uzram <TAB> offers the hidden man command")
	}
	for _, cmd := range []string{"swapoff", "mem-limit", "mm-stat", "attach", "detach", "compact"} {
		if got := complete(cmd); !slices.Equal(got, []string{"swapdev"}) {
			t.Errorf("uzram %s <TAB> offers %v, want the device", cmd, got)
		}
	}
	if got := complete("mem-limit", "swapdev"); len(got) != 0 {
		t.Errorf("uzram mem-limit swapdev <TAB> offers %v, want nothing (a size comes next)", got)
	}
	if got := complete("swapon", "--s"); !slices.Contains(got, "--size") || !slices.Contains(got, "--streams") {
		t.Errorf("uzram swapon --s<TAB> offers %v", got)
	}

	// The installed script, in a plain bash without bash-completion.
	need(t, "bash")
	script, _ := filepath.Abs("../contrib/completion/uzram.bash")
	for _, c := range []struct{ line, want string }{
		{`COMP_WORDS=(uzram swapo ""); COMP_CWORD=1; COMP_WORDS[1]=swapo`, "swapon swapoff"}, // the definition's order
		{`COMP_WORDS=(uzram swapoff ""); COMP_CWORD=2`, "swapdev"},
		{`COMP_WORDS=(uzram swapon --pri); COMP_CWORD=2`, "--priority"},
	} {
		cmd := exec.Command("bash", "-c", "source "+script+"; "+c.line+`; _uzram; echo "${COMPREPLY[*]}"`)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(uzramBin)+":"+os.Getenv("PATH"), "UZRAM_CONTROL="+s.control())
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != c.want {
			t.Errorf("bash completion of %s: %q, %v; want %q", c.line, out, err, c.want)
		}
	}

	// The zsh script, with zsh's completion builtins stubbed to print what
	// they are given (zsh filters by the typed prefix itself).
	need(t, "zsh")
	script, _ = filepath.Abs("../contrib/completion/uzram.zsh")
	for _, c := range []struct {
		words string
		want  []string
	}{
		{`words=(uzram swapoff ""); CURRENT=3`, []string{"swapdev"}},
		{`words=(uzram swapon --pri); CURRENT=3`, []string{"--priority"}},
	} {
		cmd := exec.Command("zsh", "-f", "-c", `compadd() { [[ $1 == -a ]] && print -l -- "${(@P)2}"; }; _files() { print FILES; }; `+
			c.words+"; source "+script)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(uzramBin)+":"+os.Getenv("PATH"), "UZRAM_CONTROL="+s.control())
		out, err := cmd.CombinedOutput()
		if got := strings.Fields(string(out)); err != nil || !slices.Equal(got, c.want) {
			t.Errorf("zsh completion of %s: %q, %v; want %v", c.words, out, err, c.want)
		}
	}
}

// binaryVersion is the version line of the binary under test, as uzram
// --version prints it after "uzram ".
func binaryVersion(t *testing.T) string {
	t.Helper()
	first, _, _ := strings.Cut(cliOK(t, nil, "--version"), "\n")
	v, ok := strings.CutPrefix(first, "uzram ")
	if !ok || !strings.Contains(v, " commit ") {
		t.Fatalf("uzram --version printed %q, want uzram VERSION commit COMMIT ...", first)
	}
	return v
}

// TestVersion: uzram --version (and -V) prints this binary's version and
// commit, then the running daemon's, which GET /v1/version reports.
func TestVersion(t *testing.T) {
	v := binaryVersion(t)
	if out := cliOK(t, nil, "-V", "--control", filepath.Join(t.TempDir(), "none.sock")); out != "uzram "+v+"\n" {
		t.Errorf("uzram -V with no daemon: %q", out)
	}
	s := startServer(t, "--size", "4M")
	want := "uzram " + v + "\ndaemon " + v + " (" + s.control() + ")\n"
	if out := cliOK(t, s, "--version"); out != want {
		t.Errorf("uzram --version with a daemon: %q, want %q", out, want)
	}
	if !strings.Contains(s.stderr(), `msg=starting version="`+v+`"`) {
		t.Errorf("the daemon does not log its version at start: %s", s.stderr())
	}
}
