// Command goheap builds a Go process's heap as real programs leave it: a
// Debian package list parsed into structs, maps for lookups and a JSON
// snapshot of part of it, and float64 slices (a noisy time series, prices).
// hack/realmem starts it, dumps its anonymous memory once it prints
// "ready", then closes stdin.
//
//	goheap PACKAGES_FILE MAX_PACKAGES FLOATS
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
)

type pkg struct {
	Name, Version, Section string
	Size                   int
	Fields                 map[string]string
	Depends                []string
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: goheap PACKAGES_FILE MAX_PACKAGES FLOATS")
		os.Exit(2)
	}
	limit, err1 := strconv.Atoi(os.Args[2])
	nfloats, err2 := strconv.Atoi(os.Args[3])
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "goheap: bad number")
		os.Exit(2)
	}
	pkgs, err := parse(os.Args[1], limit)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goheap:", err)
		os.Exit(1)
	}
	byName := map[string]*pkg{}
	rdeps := map[string][]string{}
	split := regexp.MustCompile(`\s*[(|]`)
	for _, p := range pkgs {
		byName[p.Name] = p
		for _, d := range strings.Split(p.Fields["Depends"], ",") {
			if n := split.Split(strings.TrimSpace(d), 2)[0]; n != "" {
				p.Depends = append(p.Depends, n)
				rdeps[n] = append(rdeps[n], p.Name)
			}
		}
	}
	snapshot, err := json.Marshal(pkgs[:len(pkgs)/4])
	if err != nil {
		fmt.Fprintln(os.Stderr, "goheap:", err)
		os.Exit(1)
	}
	rnd := rand.New(rand.NewPCG(17, 17))
	series := make([]float64, nfloats)
	prices := make([]float64, nfloats)
	for i := range series {
		series[i] = 20 + 5*math.Sin(float64(i)/500) + rnd.NormFloat64()*0.3
		prices[i] = math.Round(rnd.Float64()*50000) / 100
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	runtime.KeepAlive([]any{byName, rdeps, snapshot, series, prices})
}

// parse reads up to limit paragraphs of a Packages file.
func parse(path string, limit int) ([]*pkg, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pkgs []*pkg
	p := &pkg{Fields: map[string]string{}}
	key := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() && len(pkgs) < limit {
		line := sc.Text()
		switch {
		case line == "":
			if len(p.Fields) > 0 {
				p.Name, p.Version, p.Section = p.Fields["Package"], p.Fields["Version"], p.Fields["Section"]
				p.Size, _ = strconv.Atoi(p.Fields["Installed-Size"])
				pkgs = append(pkgs, p)
			}
			p, key = &pkg{Fields: map[string]string{}}, ""
		case (line[0] == ' ' || line[0] == '\t') && key != "":
			p.Fields[key] += "\n" + line[1:]
		default:
			if k, v, ok := strings.Cut(line, ":"); ok {
				key = k
				p.Fields[k] = strings.TrimSpace(v)
			}
		}
	}
	return pkgs, sc.Err()
}
