// Package clidoc renders a urfave/cli application's own definition (its
// commands, their flags, usage texts and arguments) as a man page, so the
// page says what --help says and cannot drift from it. urfave/cli's
// ToMan lists every flag of the synopsis on a line of its own and has no
// room for FILES or EXAMPLES; this writes man(7) directly: NAME, SYNOPSIS
// (the usage text), DESCRIPTION, OPTIONS, COMMANDS (one subsection per
// command with its flags), ENVIRONMENT (from the flags' variables), then
// the page's own sections.
package clidoc

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// Page is what a man page has beyond the application's definition.
type Page struct {
	Section int    // 8 for a system administration command
	Date    string // .TH's date, e.g. the commit's, for a reproducible page
	Source  string // .TH's source, e.g. "uzram v1.0.0"
	// Description is the DESCRIPTION section, and After the sections that
	// follow COMMANDS and ENVIRONMENT (FILES, EXAMPLES, SEE ALSO...), in
	// Text's format.
	Description string
	After       []Section
}

// Section is a titled part of the page. Text is paragraphs separated by
// blank lines; a paragraph whose lines all start with two spaces is shown
// as is (an example), and a paragraph starting "- " is a list item.
type Section struct {
	Title string
	Text  string
}

// Man renders app as a man page in man(7) markup.
func Man(app *cli.App, p Page) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w(".TH %s %d %s %s %s\n", quote(strings.ToUpper(app.Name)), p.Section, quote(p.Date), quote(p.Source), quote("System Administration"))
	w(".SH NAME\n%s \\- %s\n", Escape(app.Name), Escape(app.Usage))
	w(".SH SYNOPSIS\n.nf\n")
	for _, line := range strings.Split(strings.TrimSpace(app.UsageText), "\n") {
		// The form alone: --help aligns a description after two spaces.
		form, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
		w("%s\n", Escape(form))
	}
	w(".fi\n")
	if p.Description != "" {
		w(".SH DESCRIPTION\n%s", text(p.Description))
	}
	if flags := app.VisibleFlags(); len(flags) > 0 {
		w(".SH OPTIONS\n%s", flagList(flags))
	}
	if cmds := app.VisibleCommands(); len(cmds) > 0 {
		w(".SH COMMANDS\n")
		for _, c := range cmds {
			w("%s", command(app.Name, c))
		}
	}
	if env := environment(app); env != "" {
		w(".SH ENVIRONMENT\n%s", env)
	}
	for _, s := range p.After {
		w(".SH %s\n%s", quote(strings.ToUpper(s.Title)), text(s.Text))
	}
	return b.String()
}

// command is one command's subsection: how it is called, what it does, its
// flags.
func command(app string, c *cli.Command) string {
	var b strings.Builder
	synopsis := `\fB` + Escape(app+" "+c.Name) + `\fR`
	if len(c.VisibleFlags()) > 0 {
		synopsis += " [options]"
	}
	if c.ArgsUsage != "" {
		synopsis += " " + Escape(c.ArgsUsage)
	}
	// The heading is the name; the call comes unfilled below it, so a long
	// one is not stretched to the line's width.
	fmt.Fprintf(&b, ".SS %s\n.nf\n%s\n.fi\n.PP\n", quote(c.Name), synopsis)
	if len(c.Aliases) > 0 {
		fmt.Fprintf(&b, "Also: %s.\n.PP\n", Escape(strings.Join(c.Aliases, ", ")))
	}
	b.WriteString(text(sentence(c.Usage)))
	if c.Description != "" {
		b.WriteString(".PP\n" + text(c.Description))
	}
	if flags := c.VisibleFlags(); len(flags) > 0 {
		b.WriteString(flagList(flags))
	}
	return b.String()
}

// flagList is a tagged paragraph per flag: its names and value, then its
// usage and default.
func flagList(flags []cli.Flag) string {
	var b strings.Builder
	for _, f := range flags {
		names := f.Names()
		var tags []string
		for _, n := range names {
			dash := "\\-\\-"
			if len(n) == 1 {
				dash = "\\-"
			}
			tags = append(tags, "\\fB"+dash+Escape(n)+"\\fR")
		}
		tag := strings.Join(tags, ", ")
		usage := ""
		if df, ok := f.(cli.DocGenerationFlag); ok {
			if df.TakesValue() {
				tag += " \\fI" + placeholder(names[0]) + "\\fR"
			}
			usage = sentence(df.GetUsage())
			if def := defaultText(df); def != "" {
				usage += " Default: " + def + "."
			}
			if sf, ok := f.(cli.DocGenerationSliceFlag); ok && sf.IsSliceFlag() {
				usage += " May be given more than once."
			}
		}
		fmt.Fprintf(&b, ".TP\n%s\n%s\n", tag, Escape(usage))
	}
	return b.String()
}

// defaultText is a flag's default when the usage does not already say it.
func defaultText(f cli.DocGenerationFlag) string {
	if !f.TakesValue() || strings.Contains(f.GetUsage(), "default") {
		return ""
	}
	d := f.GetDefaultText()
	if d == "" {
		d = f.GetValue()
	}
	d = strings.Trim(d, `"`)
	if d == "" || d == "0" || d == "[]" {
		return ""
	}
	return d
}

// placeholder names a flag's value after the flag: --size SIZE.
func placeholder(name string) string {
	for _, suffix := range []string{"socket", "file", "cert", "key", "ca", "control", "config", "dir"} {
		if name == suffix || strings.HasSuffix(name, "-"+suffix) {
			if suffix == "dir" {
				return "DIR"
			}
			return "PATH"
		}
	}
	return strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// environment lists the variables flags read.
func environment(app *cli.App) string {
	var b strings.Builder
	seen := map[string]bool{}
	add := func(flags []cli.Flag) {
		for _, f := range flags {
			df, ok := f.(cli.DocGenerationFlag)
			if !ok {
				continue
			}
			for _, v := range df.GetEnvVars() {
				if !seen[v] {
					seen[v] = true
					fmt.Fprintf(&b, ".TP\n\\fB%s\\fR\nThe same as \\fB\\-\\-%s\\fR.\n", Escape(v), Escape(f.Names()[0]))
				}
			}
		}
	}
	add(app.VisibleFlags())
	for _, c := range app.VisibleCommands() {
		add(c.VisibleFlags())
	}
	return b.String()
}

// sentence capitalizes s and ends it with a period.
func sentence(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	s = strings.ToUpper(s[:1]) + s[1:]
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

// text renders paragraphs in Section.Text's format.
func text(s string) string {
	var b strings.Builder
	for i, para := range strings.Split(strings.TrimSpace(s), "\n\n") {
		lines := strings.Split(para, "\n")
		example := !slices.ContainsFunc(lines, func(l string) bool { return !strings.HasPrefix(l, "  ") })
		switch {
		case example:
			b.WriteString(".PP\n.RS 4\n.nf\n")
			for _, l := range lines {
				b.WriteString(Escape(strings.TrimPrefix(l, "  ")) + "\n")
			}
			b.WriteString(".fi\n.RE\n")
		case strings.HasPrefix(para, "- "):
			b.WriteString(".IP \\(bu 2\n" + Escape(strings.Join(strings.Fields(para[2:]), " ")) + "\n")
		default:
			if i > 0 {
				b.WriteString(".PP\n")
			}
			b.WriteString(Escape(strings.Join(strings.Fields(para), " ")) + "\n")
		}
	}
	return b.String()
}

// Escape makes s safe as man(7) text: backslashes and hyphens escaped (so
// options print as ASCII minus signs), and a line never starting with a
// control character.
func Escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}

// quote makes s one argument of a request line.
func quote(s string) string {
	return `"` + strings.ReplaceAll(Escape(s), `"`, `\(dq`) + `"`
}
