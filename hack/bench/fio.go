package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// dataKind is what the written buffers hold; it decides how much the stores
// can compress, so every kind gets its own fresh servers and fill.
type dataKind struct {
	name string
	opts []string
}

var (
	half   = dataKind{"50% compressible", []string{"--buffer_compress_percentage=50", "--refill_buffers"}}
	random = dataKind{"incompressible", []string{"--refill_buffers", "--buffer_compress_percentage=0"}}
	zeros  = dataKind{"zeros", []string{"--zero_buffers"}}
)

type job struct {
	name    string
	rw      string
	bs      string
	iodepth int
	numjobs int
}

func (j job) args() []string {
	a := []string{"--rw=" + j.rw, "--bs=" + j.bs, "--iodepth=" + strconv.Itoa(j.iodepth), "--numjobs=" + strconv.Itoa(j.numjobs)}
	if j.rw == "randrw" {
		a = append(a, "--rwmixread=70")
	}
	return a
}

func job4k(rw string, qd, nj int) job {
	label := rw
	if rw == "randrw" {
		label = "randrw 70/30"
	}
	return job{name: fmt.Sprintf("4k %s QD%d x%d", label, qd, nj), rw: rw, bs: "4k", iodepth: qd, numjobs: nj}
}

var (
	seqRead  = job{name: "128k seq read QD32", rw: "read", bs: "128k", iodepth: 32, numjobs: 1}
	seqWrite = job{name: "128k seq write QD32", rw: "write", bs: "128k", iodepth: 32, numjobs: 1}
)

// allJobs is the full 4k matrix plus sequential 128k.
func allJobs() []job {
	var js []job
	for _, qd := range []int{1, 32} {
		for _, nj := range []int{1, 2} {
			for _, rw := range []string{"randread", "randwrite", "randrw"} {
				js = append(js, job4k(rw, qd, nj))
			}
		}
	}
	return append(js, seqRead, seqWrite)
}

// quickJobs are the spine issue's figures: throughput at QD32 x2 and
// latency at QD1.
func quickJobs() []job {
	return []job{job4k("randread", 32, 2), job4k("randwrite", 32, 2), job4k("randread", 1, 1), job4k("randwrite", 1, 1)}
}

func throughputJobs() []job {
	return []job{job4k("randread", 32, 2), job4k("randwrite", 32, 2), seqRead, seqWrite}
}

type sample struct {
	iops     float64
	p50, p99 float64 // microseconds, of the job's main direction (reads for randrw)
}

// fio is one invocation's common settings.
type fio struct {
	runtime, ramp int
	tmp           string
}

func (f fio) run(ctx context.Context, t *target, j job, d dataKind) (sample, error) {
	out := filepath.Join(f.tmp, "fio.json")
	args := []string{"--name=bench", "--output-format=json", "--output=" + out,
		"--size=" + fillSize, "--group_reporting", "--time_based",
		"--runtime=" + strconv.Itoa(f.runtime), "--ramp_time=" + strconv.Itoa(f.ramp),
		// total latency percentiles (submission included), not completion only
		"--lat_percentiles=1",
		// the random map costs fio CPU that the server under test would miss
		"--norandommap", "--randrepeat=0"}
	args = append(args, t.fioTarget()...)
	args = append(args, j.args()...)
	args = append(args, d.opts...)
	if err := runFio(ctx, args); err != nil {
		return sample{}, fmt.Errorf("%s on %s: %w", j.name, t.name, err)
	}
	return parseFio(out, j.rw)
}

// fill writes the first fillSize bytes of t with d, sequentially.
func (f fio) fill(ctx context.Context, t *target, d dataKind) error {
	args := []string{"--name=fill", "--output-format=json", "--output=" + filepath.Join(f.tmp, "fill.json"),
		"--size=" + fillSize, "--rw=write", "--bs=128k", "--iodepth=16", "--numjobs=1"}
	args = append(args, t.fioTarget()...)
	args = append(args, d.opts...)
	if err := runFio(ctx, args); err != nil {
		return fmt.Errorf("fill %s: %w", t.name, err)
	}
	return nil
}

func runFio(ctx context.Context, args []string) error {
	cmd := exec.CommandContext(ctx, "fio", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no orphan load if we are killed
	// the nbd engine prints "connected to NBD server" on stdout, hence --output
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, tailBytes(b))
	}
	return nil
}

func tailBytes(b []byte) string {
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}

type fioOut struct {
	Jobs []struct {
		Error int      `json:"error"`
		Read  fioStats `json:"read"`
		Write fioStats `json:"write"`
	} `json:"jobs"`
}

type fioStats struct {
	IOPS  float64 `json:"iops"`
	LatNs struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"lat_ns"`
}

func parseFio(path, rw string) (sample, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return sample{}, err
	}
	var o fioOut
	if err := json.Unmarshal(b, &o); err != nil {
		return sample{}, fmt.Errorf("fio json: %w", err)
	}
	if len(o.Jobs) != 1 || o.Jobs[0].Error != 0 {
		return sample{}, fmt.Errorf("fio json: %d job groups, error %v", len(o.Jobs), o.Jobs)
	}
	jb := o.Jobs[0]
	main := jb.Read
	if rw == "randwrite" || rw == "write" {
		main = jb.Write
	}
	return sample{
		iops: jb.Read.IOPS + jb.Write.IOPS,
		p50:  main.LatNs.Percentile["50.000000"] / 1e3,
		p99:  main.LatNs.Percentile["99.000000"] / 1e3,
	}, nil
}
