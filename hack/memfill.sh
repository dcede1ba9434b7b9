#!/usr/bin/env bash
# Memory efficiency, side by side: fill 2 GiB of each data kind (50%
# compressible, incompressible, zeros) into a fresh `uzram serve` through
# fio's nbd engine and into the host kernel's /dev/zram0 (lz4, same data,
# fio libaio direct), then print mm_stat and the server's RSS.
#
#   hack/memfill.sh [SIZE]      SIZE defaults to 2G; needs root for zram0
#
# /dev/zram0 is used only if it is unconfigured, and is reset afterwards.
set -euo pipefail
size=${1:-2G}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/uzram-memfill.XXXXXX)
pid=""
zram_ours=0
cleanup() {
	[[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	if [[ $zram_ours == 1 ]]; then echo 1 >/sys/block/zram0/reset || true; fi
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

go build -C "$root" -o "$work/uzram" .
declare -A kinds=(
	[half]="--buffer_compress_percentage=50 --refill_buffers"
	[random]="--buffer_compress_percentage=0 --refill_buffers"
	[zeros]="--zero_buffers"
)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
printf '| data | target | orig_data_size | compr_data_size | mem_used_total | slot table | RSS | RSS / (compr + slots) |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|\n'
for kind in half random zeros; do
	sock="$work/$kind.sock"
	"$work/uzram" serve --size "$size" --socket "$sock" --control "$work/$kind.ctl" >"$work/$kind.out" 2>"$work/$kind.err" &
	pid=$!
	for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
	# shellcheck disable=SC2086
	fio --name=fill --ioengine=nbd --uri="nbd+unix:///uzram0?socket=$sock" --rw=write --bs=128k \
		--iodepth=16 --size="$size" ${kinds[$kind]} --output-format=terse >/dev/null
	read -r -a mm < <("$work/uzram" --control "$work/$kind.ctl" mm-stat uzram0)
	rss=$(awk '/VmRSS/ { print $2 * 1024 }' "/proc/$pid/status")
	slots=$(( $(numfmt --from=iec "$size") / 4096 * 16 ))
	printf '| %s | uzram lz4 | %s | %s | %s | %s | %s | %s |\n' "$kind" "$(mib "${mm[0]}")" "$(mib "${mm[1]}")" \
		"$(mib "${mm[2]}")" "$(mib "$slots")" "$(mib "$rss")" \
		"$(awk -v r="$rss" -v c="${mm[1]}" -v s="$slots" 'BEGIN { printf "%.3f", r / (c + s) }')"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	pid=""
	if [[ -b /dev/zram0 && $(id -u) == 0 && $(cat /sys/block/zram0/disksize) == 0 ]]; then
		zram_ours=1
		echo lz4 >/sys/block/zram0/comp_algorithm
		echo "$size" >/sys/block/zram0/disksize
		# shellcheck disable=SC2086
		fio --name=fill --ioengine=libaio --direct=1 --filename=/dev/zram0 --rw=write --bs=128k \
			--iodepth=16 --size="$size" ${kinds[$kind]} --output-format=terse >/dev/null
		read -r -a mm </sys/block/zram0/mm_stat
		printf '| %s | kernel zram lz4 | %s | %s | %s | – | – (kernel) | mem_used_total / compr: %s |\n' "$kind" \
			"$(mib "${mm[0]}")" "$(mib "${mm[1]}")" "$(mib "${mm[2]}")" \
			"$(awk -v m="${mm[2]}" -v c="${mm[1]}" 'BEGIN { if (c > 0) printf "%.3f", m / c; else print "–" }')"
		echo 1 >/sys/block/zram0/reset
		zram_ours=0
	fi
done
