package swapsetup

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// EvalSize evaluates a zram-generator size expression such as
// "min(ram / 2, 4096)": numbers, the variable ram (the host's memory in MiB),
// + - * / with the usual precedence, unary minus, parentheses, and the
// functions min and max of one or more arguments. The result is in MiB.
// It is a small recursive-descent evaluator over that grammar alone: a
// config file must not be able to run anything.
func EvalSize(expr string, ramMiB float64) (float64, error) {
	if len(expr) > 1024 {
		return 0, fmt.Errorf("size expression too long (%d characters, at most 1024)", len(expr))
	}
	p := &exprParser{s: expr, ram: ramMiB}
	v, err := p.sum()
	if err == nil {
		p.space()
		if p.i < len(p.s) {
			err = p.errorf("unexpected %q", p.s[p.i:])
			if c := p.s[p.i]; c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' {
				err = p.errorf("unexpected %q (sizes are in MiB without a unit: 4096, not 4G)", p.s[p.i:])
			}
		}
	}
	if err != nil {
		return 0, fmt.Errorf("size expression %q: %w", expr, err)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("size expression %q: result is not a finite number", expr)
	}
	return v, nil
}

type exprParser struct {
	s     string
	i     int
	depth int
	ram   float64
}

// maxDepth bounds nesting, so a hostile file cannot exhaust the stack.
const maxDepth = 64

func (p *exprParser) errorf(format string, args ...any) error {
	return fmt.Errorf("at column %d: %s", p.i+1, fmt.Sprintf(format, args...))
}

func (p *exprParser) space() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (p *exprParser) peek() byte {
	p.space()
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func (p *exprParser) sum() (float64, error) {
	v, err := p.product()
	for err == nil {
		op := p.peek()
		if op != '+' && op != '-' {
			break
		}
		p.i++
		var r float64
		if r, err = p.product(); err == nil {
			if op == '+' {
				v += r
			} else {
				v -= r
			}
		}
	}
	return v, err
}

func (p *exprParser) product() (float64, error) {
	v, err := p.unary()
	for err == nil {
		op := p.peek()
		if op != '*' && op != '/' {
			break
		}
		at := p.i
		p.i++
		var r float64
		if r, err = p.unary(); err == nil {
			if op == '*' {
				v *= r
			} else if r == 0 {
				p.i = at
				err = p.errorf("division by zero")
			} else {
				v /= r
			}
		}
	}
	return v, err
}

func (p *exprParser) unary() (float64, error) {
	if p.peek() == '-' {
		p.i++
		if p.depth++; p.depth > maxDepth {
			return 0, p.errorf("nested too deeply")
		}
		v, err := p.unary()
		p.depth--
		return -v, err
	}
	return p.primary()
}

func (p *exprParser) primary() (float64, error) {
	c := p.peek()
	switch {
	case c == 0:
		return 0, p.errorf("expression ends too early: want a number, ram, min(...), max(...) or (...)")
	case c == '(':
		p.i++
		if p.depth++; p.depth > maxDepth {
			return 0, p.errorf("nested too deeply")
		}
		v, err := p.sum()
		p.depth--
		if err != nil {
			return 0, err
		}
		if p.peek() != ')' {
			return 0, p.errorf("want ')'")
		}
		p.i++
		return v, nil
	case c >= '0' && c <= '9' || c == '.':
		start := p.i
		for p.i < len(p.s) && (p.s[p.i] >= '0' && p.s[p.i] <= '9' || p.s[p.i] == '.') {
			p.i++
		}
		v, err := strconv.ParseFloat(p.s[start:p.i], 64)
		if err != nil {
			p.i = start
			return 0, p.errorf("bad number %q", p.s[start:p.i])
		}
		return v, nil
	case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_':
		start := p.i
		for p.i < len(p.s) && (p.s[p.i] >= 'a' && p.s[p.i] <= 'z' || p.s[p.i] >= 'A' && p.s[p.i] <= 'Z' || p.s[p.i] == '_') {
			p.i++
		}
		name := strings.ToLower(p.s[start:p.i])
		switch name {
		case "ram":
			return p.ram, nil
		case "min", "max":
			return p.call(name)
		}
		p.i = start
		return 0, p.errorf("unknown name %q: want ram, min or max", name)
	}
	return 0, p.errorf("unexpected %q: want a number, ram, min(...), max(...) or (...)", string(c))
}

func (p *exprParser) call(fn string) (float64, error) {
	if p.peek() != '(' {
		return 0, p.errorf("want '(' after %s", fn)
	}
	p.i++
	if p.depth++; p.depth > maxDepth {
		return 0, p.errorf("nested too deeply")
	}
	defer func() { p.depth-- }()
	var v float64
	for n := 0; ; n++ {
		a, err := p.sum()
		if err != nil {
			return 0, err
		}
		switch {
		case n == 0:
			v = a
		case fn == "min":
			v = math.Min(v, a)
		default:
			v = math.Max(v, a)
		}
		switch p.peek() {
		case ',':
			p.i++
		case ')':
			p.i++
			return v, nil
		default:
			return 0, p.errorf("want ',' or ')' in %s(...)", fn)
		}
	}
}
