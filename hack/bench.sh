#!/usr/bin/env bash
# One-command benchmark: builds uzram and hack/bench, then runs uzram (lz4
# percpu, lz4 pool, zstd percpu) against nbdkit null / memory sparse / memory
# zstd through fio's nbd engine, with host kernel zram as a reference.
#
#   hack/bench.sh            full run (about 40 minutes)
#   hack/bench.sh --quick    spine figures only (a few minutes)
#   hack/bench.sh --go       Go hot-path benchmarks with -benchmem
#   hack/bench.sh --guest    in a 6.12 qemu guest: uzram over ublk and over NBD
#                            against the guest's zram and null transports
#                            (hack/guest-bench.sh; its options pass through,
#                            e.g. --reps 1 --runtime 5 --targets uzram-ublk,zram)
#
# Any other flags go to hack/bench (see: go run ./hack/bench --help). To
# measure just the request path quickly, or a change before/after in one run:
#   hack/bench.sh --quick --no-zram --targets uzram-lz4-percpu,nbdkit-null,nbdkit-zstd \
#       --jobs "QD32 x2" --uzram-b OLD_BINARY   (then add uzramB-lz4-percpu to --targets)
# Memory alone, at another fill (devices are twice the fill):
#   hack/bench.sh --quick --memory-only --fill 4G --targets uzram-lz4-percpu,nbdkit-zstd
# Results: results/bench-<date>.md (also on stdout), .tsv and .png charts.
# Needs root for /dev/zram0 (skipped otherwise, or with --no-zram).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [[ " $* " == *" --guest "* ]]; then
	args=()
	for a in "$@"; do [[ $a == --guest ]] || args+=("$a"); done
	exec hack/guest-bench.sh "${args[@]}"
fi
build=hack/.build/bench
mkdir -p "$build" results

need=(go)
if [[ " $* " != *" --go "* ]]; then need+=(fio nbdkit gnuplot); fi
for t in "${need[@]}"; do
	command -v "$t" >/dev/null || { echo "bench.sh: $t not found" >&2; exit 1; }
done

go build -o "$build/uzram" .
go build -o "$build/bench" ./hack/bench

if [[ $(id -u) != 0 && " $* " != *" --no-zram "* ]]; then
	set -- --no-zram "$@"
fi

# hack/bench stops its servers and resets /dev/zram0 itself on SIGINT/TERM;
# the trap forwards those signals and waits for it to finish cleaning up. If
# it died without cleaning up (SIGKILL), the marker it keeps while zram0 is
# its own tells us to reset the device; anyone else's zram0 is left alone.
pid=
marker=$build/zram-owner
cleanup() {
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	if [[ -f $marker ]] && ! kill -0 "$(cat "$marker")" 2>/dev/null; then
		echo 1 >/sys/block/zram0/reset || echo "bench.sh: reset /dev/zram0 by hand" >&2
		rm -f "$marker"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$build/bench" --uzram "$build/uzram" --repo "$root" --out results --zram-marker "$marker" "$@" &
pid=$!
wait "$pid"
