package clidoc

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestMan(t *testing.T) {
	app := &cli.App{
		Name: "tool", Usage: "does things", UsageText: "tool [options]  list things\ntool COMMAND",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Value: "/run/x.sock", EnvVars: []string{"TOOL_CONTROL"}, Usage: "the socket"},
			&cli.BoolFlag{Name: "raw", Aliases: []string{"r"}, Usage: "raw output"},
		},
		Commands: []*cli.Command{
			{Name: "go-fast", Usage: "go fast", ArgsUsage: "NAME", Flags: []cli.Flag{
				&cli.StringSliceFlag{Name: "with", Usage: "a thing"},
				&cli.IntFlag{Name: "level", Value: 3, Usage: "how fast"},
			}},
			{Name: "secret", Hidden: true},
		},
	}
	app.Setup()
	got := Man(app, Page{Section: 8, Date: "2026-12-06", Source: "tool v1", Description: "First.\n\n  tool go-fast x\n\n- an item",
		After: []Section{{Title: "See also", Text: "other(1)"}}})
	for _, want := range []string{
		`.TH "TOOL" 8 "2026\-12\-06" "tool v1" "System Administration"`,
		".SH NAME\ntool \\- does things\n",
		".SH SYNOPSIS\n.nf\ntool [options]\ntool COMMAND\n.fi\n",
		".SH DESCRIPTION\nFirst.\n.PP\n.RS 4\n.nf\ntool go\\-fast x\n.fi\n.RE\n.IP \\(bu 2\nan item\n",
		".TP\n\\fB\\-\\-control\\fR \\fIPATH\\fR\nThe socket. Default: /run/x.sock.\n",
		".TP\n\\fB\\-\\-raw\\fR, \\fB\\-r\\fR\nRaw output.\n",
		".SS \"go\\-fast\"\n.nf\n\\fBtool go\\-fast\\fR [options] NAME\n.fi\n.PP\nGo fast.\n",
		"\\fB\\-\\-with\\fR \\fIWITH\\fR\nA thing. May be given more than once.\n",
		"\\fB\\-\\-level\\fR \\fILEVEL\\fR\nHow fast. Default: 3.\n",
		".SH ENVIRONMENT\n.TP\n\\fBTOOL_CONTROL\\fR\nThe same as \\fB\\-\\-control\\fR.\n",
		".SH \"SEE ALSO\"\nother(1)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("page lacks\n%s\n--- page:\n%s", want, got)
		}
	}
	if strings.Contains(got, "secret") {
		t.Error("a hidden command is on the page")
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		`a\b`:        `a\eb`,
		"--x":        `\-\-x`,
		".start":     `\&.start`,
		"'quote":     `\&'quote`,
		"x\n.y\n'z":  "x\n\\&.y\n\\&'z",
		"plain text": "plain text",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}
