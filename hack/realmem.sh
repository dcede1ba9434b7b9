#!/usr/bin/env bash
# Memory on real data, uzram against the host's zram, side by side: builds a
# corpus of real anonymous memory (the heaps of a Python, a Node.js, a Java
# and a Go program holding parsed package lists and arrays of floats, dumped
# from /proc/PID/mem, zero pages included), writes it into uzram with
# nbdcopy and into /dev/zram0 with dd, and prints per store: orig, compr,
# mem_used_total, same-filled and huge pages, the server's whole RSS 1 s,
# 10 s and 120 s after the copy, zram's all-in memory and CPU time per page;
# then the corpus analysed in-process (duplicates, per-class store overhead
# against zsmalloc's).
#
#   hack/realmem.sh                    build a fresh corpus, measure (about 4 minutes)
#   hack/realmem.sh --corpus FILE      reuse a corpus from an earlier run
#   hack/realmem.sh --uzram-b OLD_BIN  also measure a second binary (before/after)
#   hack/realmem.sh --configs "lz4,zstd" --settle 10s --no-zram
#
# Needs root (reading other processes' memory; /dev/zram0, used only if it
# is unconfigured and reset afterwards), nbdcopy (libnbd-bin), python3,
# node, java/javac (each heap is skipped if its runtime is missing).
# Results: results/realmem-<date>.md (also on stdout); the corpus is left in
# results/realmem-corpus.bin for --corpus, and is never committed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=hack/.build/realmem
mkdir -p "$build" results
command -v nbdcopy >/dev/null || { echo "realmem.sh: nbdcopy not found (apt-get install libnbd-bin)" >&2; exit 1; }

corpus=
args=()
while (($#)); do
	case $1 in
	--corpus) corpus=$2; shift 2 ;;
	*) args+=("$1"); shift ;;
	esac
done

go build -o "$build/uzram" .
go build -o "$build/realmem" ./hack/realmem
go build -o "$build/goheap" ./hack/realmem/goheap
if [[ -z $corpus ]]; then
	corpus=results/realmem-corpus.bin
	"$build/realmem" corpus -o "$corpus" -heaps hack/realmem/heaps -goheap "$build/goheap"
fi
out=results/realmem-$(date +%Y%m%d-%H%M%S).md
"$build/realmem" run -corpus "$corpus" -uzram "$build/uzram" "${args[@]}" | tee "$out"
echo "realmem.sh: wrote $out" >&2
