// Command realmem measures uzram's memory on real data: a corpus of the
// anonymous memory of real programs (corpus.go), written into uzram and into
// the host's zram side by side (run.go), and analysed in-process to show the
// data and the store alone (analyze.go). hack/realmem.sh builds and runs it.
//
//	realmem corpus -o FILE [-heaps DIR] [-goheap BIN]
//	realmem analyze -corpus FILE [-algos lz4,zstd]
//	realmem run -corpus FILE -uzram BIN [flags]
//	realmem zram -corpus FILE [-algos lz4,zstd] [-recomp zstd]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/uzram/uzram/zcomp"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "corpus":
		err = corpusCmd(os.Args[2:])
	case "analyze":
		err = analyzeCmd(os.Args[2:])
	case "run":
		err = runCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "realmem:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: realmem corpus|analyze|run|zram [flags] (see the package comment)")
	os.Exit(2)
}

func corpusCmd(args []string) error {
	fs := flag.NewFlagSet("corpus", flag.ExitOnError)
	out := fs.String("o", "", "corpus file to write")
	heaps := fs.String("heaps", "hack/realmem/heaps", "folder of the heap programs' sources")
	goheap := fs.String("goheap", "", "the Go heap program's binary (hack/realmem/goheap)")
	fs.Parse(args)
	if *out == "" || *goheap == "" {
		return fmt.Errorf("corpus: -o and -goheap are required")
	}
	_, err := buildCorpus(*out, *heaps, *goheap)
	return err
}

func analyzeCmd(args []string) error {
	fs := flag.NewFlagSet("analyze", flag.ExitOnError)
	corpus := fs.String("corpus", "", "corpus file")
	algos := fs.String("algos", "lz4,zstd", "algorithms, comma-separated")
	fs.Parse(args)
	for _, algo := range strings.Split(*algos, ",") {
		a, err := analyze(*corpus, algo, zcomp.Params{})
		if err != nil {
			return err
		}
		a.write(os.Stdout)
		a.histogram(os.Stdout)
	}
	return nil
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", a...)
}
