#!/usr/bin/env bash
# Does memory come back? Start a fresh `uzram serve`, note its RSS, fill the
# whole device through fio's nbd engine (50% compressible), note RSS and
# mm_stat, TRIM the whole device, wait for the daemon to give memory back,
# and compare its RSS with the fresh figure (issue 5: within 10%).
#
#   hack/memtrim.sh [SIZE [SERVE_FLAGS...]]   SIZE defaults to 2G
#
# Run as root for the default swap-safe settings (mlockall); pass --no-mlock
# to measure without. The table at the end lists the mappings whose
# resident size grew most from fresh to after the TRIM (from
# /proc/PID/smaps): the big anonymous one holding the 256 MiB ballast is the
# Go heap, ~8 MiB ones the store's arenas (or thread stacks), file mappings
# the binary.
set -euo pipefail
size=${1:-2G}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/uzram-memtrim.XXXXXX)
pid=""
cleanup() {
	[[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

go build -C "$root" -o "$work/uzram" .
sock=$work/uzram0.sock
ctl=$work/control.sock
uri="nbd+unix:///uzram0?socket=$sock"
"$work/uzram" serve --size "$size" --socket "$sock" --control "$ctl" "$@" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || { cat "$work/err"; exit 1; }

rss() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$pid/status"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
mm() { "$work/uzram" --control "$ctl" mm-stat uzram0; }
# smaps: "start rss_kB size_kB name" per mapping with anything resident.
maps() {
	awk '/^[0-9a-f]+-[0-9a-f]+ / { split($1, r, "-"); start = r[1]; name = ($6 == "" ? "[anon]" : $6) }
		/^Size:/ { sz = $2 }
		/^Rss:/ { print start, $2, sz, name }' "/proc/$pid/smaps"
}

sleep 2
fresh=$(rss)
maps >"$work/fresh.maps"
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=128k --iodepth=16 --size="$size" \
	--buffer_compress_percentage=50 --refill_buffers --output-format=terse >/dev/null
filled=$(rss)
read -r -a mmf < <(mm)
fio --name=trim --ioengine=nbd --uri="$uri" --rw=trim --bs=1m --iodepth=4 --size="$size" \
	--output-format=terse >/dev/null
read -r -a mmt < <(mm)
# The store gives its memory back at once; the daemon returns the Go heap
# once store memory has held still for a poll (5 s): two polls and a bit,
# then until RSS settles.
sleep 12
after=$(rss)
for _ in $(seq 30); do
	sleep 2
	prev=$after
	after=$(rss)
	[[ $after == "$prev" ]] && break
done
read -r -a mma < <(mm)
maps >"$work/after.maps"

echo "uzram serve --size $size $*"
printf '| | RSS | mem_used_total | orig_data_size |\n|---|---:|---:|---:|\n'
printf '| fresh | %s MiB | | |\n' "$(mib "$fresh")"
printf '| filled | %s MiB | %s MiB | %s MiB |\n' "$(mib "$filled")" "$(mib "${mmf[2]}")" "$(mib "${mmf[0]}")"
printf '| after TRIM of everything | %s MiB | %s | %s |\n' "$(mib "$after")" "${mma[2]}" "${mma[0]}"
awk -v a="$after" -v f="$fresh" 'BEGIN { printf "after / fresh: %.3f (target <= 1.10); mem_used_total right after the TRIM: %s\n", a / f, "'"${mmt[2]}"'" }'
echo "mappings that grew most, fresh -> after (kB resident, kB mapped):"
awk 'NR == FNR { f[$1] = $2; next } { d = $2 - f[$1]; if (d > 0) printf "%8d  %8d -> %8d of %8d  %s %s\n", d, f[$1], $2, $3, $1, $4 }' \
	"$work/fresh.maps" "$work/after.maps" | sort -rn | head -8
