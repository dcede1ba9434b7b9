#!/usr/bin/env bash
# guest-bench-scenario.sh: the inside of hack/guest-bench.sh, run in the
# 6.12 guest (chrooted into the host's root over 9p, /tmp and /run tmpfs).
# Sets every target up, writes the data targets once, then runs the fio jobs
# REPS times, interleaved across targets (every target once per job and
# repetition), printing one record per run for the host:
#   @@ r target=T job=J rep=N iops=X p50_us=Y p90_us= p99_us= mean_us= errors=
# and @@ target / @@ fill / @@ fail records, ## narration.
# Targets are setup_NAME / teardown_NAME (dashes become underscores); a
# setup sets DEV, and DATA=1 when the target stores what is written.
set -euo pipefail
# shellcheck source=/dev/null
. "${GUEST_ENV:?}"
: "${B:?}" "${TARGETS:?}" "${JOBS:?}" "${REPS:?}" "${RUNTIME:?}" "${FILL:?}" "${DEV_SIZE:?}"
UBLKSRV=${UBLKSRV:-}

say() { echo "@@ $*"; }
log() { echo "## $*"; }

R=/run/uzram
mkdir -p "$R"

# alive PID: running, not a zombie (a child that exited and is not yet
# reaped still answers kill -0).
alive() {
	case $(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) in
	"" | Z) return 1 ;;
	esac
}

# wait_for TEST PATH [PID]: up to 10 s for [ TEST PATH ], while PID lives.
wait_for() {
	for _ in $(seq 100); do
		test "$1" "$2" && return 0
		[ -z "${3:-}" ] || alive "$3" || return 1
		sleep 0.1
	done
	return 1
}

# stop_pid PID: SIGTERM, up to 20 s for it to exit, then SIGKILL; reaps it.
stop_pid() {
	[ -n "${1:-}" ] || return 0
	kill -TERM "$1" 2>/dev/null || return 0
	for _ in $(seq 200); do
		alive "$1" || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# nbd_attach SOCK DEV [nbd-client flags]: as README's "Swap on uzram" attaches
# a device (without -swap, which only mlocks nbd-client), and 128 KiB
# requests as on 6.1 (hack/guest-scenario.sh does the same).
nbd_attach() {
	local sock=$1 dev=$2 q=/sys/block/${2#/dev/}/queue
	shift 2
	nbd-client -unix "$sock" "$@" -b 4096 -connections 2 -t 600 "$dev" >/dev/null || return 1
	for _ in $(seq 50); do
		[ "$(cat "/sys/block/${dev#/dev/}/size")" != 0 ] && break
		sleep 0.1
	done
	echo 0 >"$q/wbt_lat_usec"
	[ "$(cat "$q/max_sectors_kb")" -le 128 ] || echo 128 >"$q/max_sectors_kb"
}

# ---- targets -------------------------------------------------------------------

# uzram through the kernel's ublk driver, as an admin would run it: every
# flag at its default (mlock, IO_FLUSHER, --realtime auto, one queue per CPU).
setup_uzram_ublk() {
	"$B/uzram" serve --size "$DEV_SIZE" --name uzram0 --ublk --ublk-id 0 >"$R/uzram0.log" 2>&1 &
	pid_uzram_ublk=$!
	if ! wait_for -b /dev/ublkb0 "$pid_uzram_ublk"; then
		tail -5 "$R/uzram0.log" | sed 's/^/## uzram0: /'
		return 1
	fi
	DEV=/dev/ublkb0 DATA=1
}
teardown_uzram_ublk() { stop_pid "${pid_uzram_ublk:-}"; }

# The same binary over NBD: another instance with its own socket and control
# socket, attached with nbd-client.
setup_uzram_nbd() {
	"$B/uzram" serve --size "$DEV_SIZE" --name uzram1 --socket "$R/uzram1.sock" --control "$R/c1.sock" >"$R/uzram1.log" 2>&1 &
	pid_uzram_nbd=$!
	if ! wait_for -S "$R/uzram1.sock" "$pid_uzram_nbd"; then
		tail -5 "$R/uzram1.log" | sed 's/^/## uzram1: /'
		return 1
	fi
	nbd_attach "$R/uzram1.sock" /dev/nbd0 -N uzram1 || return 1
	DEV=/dev/nbd0 DATA=1
}
teardown_uzram_nbd() {
	nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
	stop_pid "${pid_uzram_nbd:-}"
}

# The guest kernel's zram, lz4.
setup_zram() {
	echo lz4 >/sys/block/zram0/comp_algorithm
	echo "$DEV_SIZE" >/sys/block/zram0/disksize
	DEV=/dev/zram0 DATA=1
}
teardown_zram() { echo 1 >/sys/block/zram0/reset || true; }

# nbdkit null: stores nothing; what the NBD transport alone costs.
setup_nbdkit_null() {
	nbdkit -f -U "$R/nbdkit-null.sock" null size="$DEV_SIZE" >"$R/nbdkit.log" 2>&1 &
	pid_nbdkit=$!
	wait_for -S "$R/nbdkit-null.sock" "$pid_nbdkit" || return 1
	nbd_attach "$R/nbdkit-null.sock" /dev/nbd1 || return 1
	DEV=/dev/nbd1 DATA=0
}
teardown_nbdkit_null() {
	nbd-client -d /dev/nbd1 >/dev/null 2>&1 || true
	stop_pid "${pid_nbdkit:-}"
}

# ublksrv's null target (UBLKSRV: a binary the user built; never part of the
# repo): what the ublk transport alone costs. 2 queues, depth 128; the
# device is the id it prints.
setup_ublksrv_null() {
	[ -x "$UBLKSRV" ] || return 1
	local id
	"$UBLKSRV" add -t null -q 2 -d 128 >"$R/ublksrv-add.log" 2>&1 || { sed 's/^/## ublksrv: /' "$R/ublksrv-add.log"; return 1; }
	id=$(grep -o 'dev id [0-9]*' "$R/ublksrv-add.log" | head -1 | awk '{print $3}')
	[ -n "$id" ] || id=$("$UBLKSRV" list 2>/dev/null | grep -o 'dev id [0-9]*' | awk '$3 != 0 {print $3}' | tail -1)
	[ -n "$id" ] || { sed 's/^/## ublksrv: /' "$R/ublksrv-add.log"; return 1; }
	wait_for -b "/dev/ublkb$id" || return 1
	log "ublksrv: $("$UBLKSRV" list -n "$id" 2>&1 | tr '\n\t' '  ' | cut -c1-240)"
	DEV=/dev/ublkb$id DATA=0
}
teardown_ublksrv_null() { "$UBLKSRV" del -a >/dev/null 2>&1 || true; }

# ---- jobs --------------------------------------------------------------------------

job_args() {
	case $1 in
	randread-qd1) echo "--rw=randread --iodepth=1 --numjobs=1" ;;
	randwrite-qd1) echo "--rw=randwrite --iodepth=1 --numjobs=1" ;;
	randread-qd32x2) echo "--rw=randread --iodepth=32 --numjobs=2" ;;
	randwrite-qd32x2) echo "--rw=randwrite --iodepth=32 --numjobs=2" ;;
	*) return 1 ;;
	esac
}

# fill DEV NAME: FILL bytes of fio's 50%-compressible buffers, as
# hack/bench.sh writes its devices before the jobs, so reads hit stored pages.
fill() {
	local bw rc=0
	fio --name=fill --filename="$1" --rw=write --bs=1M --size="$FILL" --ioengine=libaio --iodepth=4 --direct=1 \
		--buffer_compress_percentage=50 --refill_buffers --output-format=json >"$R/fill.json" 2>"$R/fill.err" || rc=$?
	if [ "$rc" != 0 ]; then
		say "fail target=$2 fill rc=$rc $(tail -1 "$R/fill.err")"
		return 1
	fi
	bw=$(jq -r '.jobs[0].write.bw_bytes / 1048576 | floor' "$R/fill.json")
	say "fill target=$2 dev=$1 size=$FILL mib_s=$bw"
}

# run_job TARGET DEV JOB REP: one fio run, one record. Completion latency
# (clat), as fio prints it: p50, p90, p99 and the mean.
run_job() {
	local out rc=0
	# shellcheck disable=SC2046 # job_args is a list of words
	out=$(timeout $((RUNTIME + 120)) fio --name="$3" --filename="$2" $(job_args "$3") --bs=4k --size="$FILL" \
		--ioengine=libaio --direct=1 --time_based --runtime="$RUNTIME" --ramp_time=1 --group_reporting \
		--norandommap --randrepeat=0 --buffer_compress_percentage=50 --refill_buffers \
		--output-format=json 2>"$R/fio.err") || rc=$?
	if [ "$rc" != 0 ]; then
		say "fail target=$1 job=$3 rep=$4 rc=$rc $(tail -1 "$R/fio.err")"
		return 0
	fi
	echo "$out" | jq -r --arg t "$1" --arg j "$3" --arg r "$4" '.jobs[0] as $x |
		(if ($j | startswith("randwrite")) then $x.write else $x.read end) as $d |
		($d.clat_ns.percentile // {}) as $p |
		"@@ r target=\($t) job=\($j) rep=\($r) iops=\($d.iops | floor)" +
		" p50_us=\(($p["50.000000"] // 0) / 1000) p90_us=\(($p["90.000000"] // 0) / 1000)" +
		" p99_us=\(($p["99.000000"] // 0) / 1000) mean_us=\(($d.clat_ns.mean // 0) / 1000 * 100 | floor / 100)" +
		" errors=\($x.error)"'
}

# uzram_stats NAME CONTROL PID: what the daemon holds after the run.
uzram_stats() {
	local rss
	rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$3/status" 2>/dev/null || echo 0)
	say "uzram name=$1 rss_kib=$rss mm_stat=\"$("$B/uzram" --control "$2" mm-stat "$1" 2>&1 | tr -s ' ')\" io_stat=\"$("$B/uzram" --control "$2" io-stat "$1" 2>&1 | tr -s ' ')\""
}

# ---- the run ---------------------------------------------------------------------

log "guest up: $(uname -r), $(nproc) CPUs, $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) KiB RAM"
# Module autoloading would run the initramfs's modprobe, not this root's:
# load what the targets need by hand.
modprobe nbd nbds_max=2
modprobe zram num_devices=1
modprobe ublk_drv || log "no ublk_drv in $(uname -r)"
dmesg -c >/dev/null

# ublksrv picks the first free id: set it up after uzram's /dev/ublkb0.
order=
for t in $TARGETS; do [ "$t" = ublksrv-null ] || order="$order $t"; done
for t in $TARGETS; do [ "$t" != ublksrv-null ] || order="$order $t"; done

declare -A dev data
for t in $order; do
	DEV='' DATA=0
	if declare -F "setup_${t//-/_}" >/dev/null && "setup_${t//-/_}" && [ -b "$DEV" ]; then
		dev[$t]=$DEV
		data[$t]=$DATA
		q=/sys/block/${DEV#/dev/}/queue
		# The same queue treatment for every blk-mq target: no I/O
		# scheduler, no writeback throttling (uzram's swap setup turns
		# it off too). zram is bio-based and has neither.
		if [ -w "$q/scheduler" ]; then echo none >"$q/scheduler" 2>/dev/null || true; fi
		if [ -w "$q/wbt_lat_usec" ]; then echo 0 >"$q/wbt_lat_usec" 2>/dev/null || true; fi
		say "target name=$t dev=$DEV data=$DATA scheduler=\"$(cat "$q/scheduler" 2>/dev/null)\" max_sectors_kb=$(cat "$q/max_sectors_kb") nr_requests=$(cat "$q/nr_requests" 2>/dev/null || echo -) wbt_lat_usec=$(cat "$q/wbt_lat_usec" 2>/dev/null || echo -) nr_hw_queues=$(find "/sys/block/${DEV#/dev/}/mq" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
	else
		say "fail target=$t setup"
	fi
done

for t in $TARGETS; do
	[ "${data[$t]:-0}" = 1 ] || continue
	fill "${dev[$t]}" "$t" || unset "dev[$t]"
done
[ -n "${dev[zram]:-}" ] && log "zram after fill: mm_stat $(tr -s ' ' </sys/block/zram0/mm_stat)"
log "memory after fill: $(awk '/^(MemFree|MemAvailable):/ {printf "%s %d MiB ", $1, $2 / 1024}' /proc/meminfo)"

for rep in $(seq "$REPS"); do
	for j in $JOBS; do
		for t in $TARGETS; do
			[ -n "${dev[$t]:-}" ] || continue
			run_job "$t" "${dev[$t]}" "$j" "$rep"
		done
	done
done

log "memory after the jobs: $(awk '/^(MemFree|MemAvailable):/ {printf "%s %d MiB ", $1, $2 / 1024}' /proc/meminfo)"
[ -n "${dev[uzram-ublk]:-}" ] && uzram_stats uzram0 "$R/control.sock" "$pid_uzram_ublk"
[ -n "${dev[uzram-nbd]:-}" ] && uzram_stats uzram1 "$R/c1.sock" "$pid_uzram_nbd"
[ -n "${dev[zram]:-}" ] && say "zram mm_stat=\"$(tr -s ' ' </sys/block/zram0/mm_stat)\" io_stat=\"$(tr -s ' ' </sys/block/zram0/io_stat)\""
# --realtime auto switches to SCHED_RR when free memory runs short: that
# would change what is measured, so say if it did.
for f in "$R"/uzram0.log "$R"/uzram1.log; do
	[ -f "$f" ] || continue
	grep -iE 'SCHED_RR|error|warn|panic' "$f" | head -5 | sed "s|^|## ${f##*/}: |" || true
done

for t in $order; do
	[ -n "${dev[$t]:-}" ] && "teardown_${t//-/_}"
done
dmesg | grep -vE 'detected capacity change|NBD_DISCONNECT|Disconnected due to user|shutting down sockets' |
	sed 's/^/## kernel: /' | head -40 || true
say "done"
