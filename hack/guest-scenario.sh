#!/usr/bin/env bash
# Runs inside the guest VM that hack/guest-swap.sh boots (through
# hack/guest-init.sh, chrooted into the host's root over 9p). It swaps a
# memory workload of about twice the guest's RAM first onto the NBD server
# (uzram, or nbdkit before uzram can serve) and then onto the guest kernel's
# own zram, runs fio with verification on both devices, and prints records
# for the host:
#   "@@ <name> key=value ..."  one fact; guest-swap.sh builds its table from
#                              the "@@ summary" records
#   "## ..."                   narration for the reader
# Settings come from the file named by GUEST_ENV, written by guest-swap.sh.
set -euo pipefail
# shellcheck source=/dev/null
. "${GUEST_ENV:?}"
: "${B:?}" "${SERVER:?}" "${DEV_SIZE:?}" "${WORKLOAD:?}" "${NBD_FLAGS:?}" "${FIO_SIZE:?}"
: "${WORKLOAD_GODEBUG=}" "${MEMCHECK_TIMEOUT:=600}" "${PAGE_CLUSTER:=0}" "${FIO_TIMEOUT:=120}" "${PHASES:=uzram ublk zram fio ublkfio cli ublkcli restart takeover ublktakeover}" "${TAKEOVER_WORKLOAD:=256M}" "${TAKEOVER_MEMMAX:=96M}"
: "${UBLK_WORKLOAD:=$WORKLOAD}"

say() { echo "@@ $*"; }
log() { echo "## $*"; }

SOCK=/run/uzram/uzram0.sock
UBLK=/dev/ublkb0
SRVLOG=/run/uzram/server.log
mkdir -p /run/uzram
srv_pid=
failed=0
nbd_max_sectors_kb_default=

# fail records a failed check and carries on, so one run shows every problem.
fail() {
	say "fail what=\"$*\""
	failed=$((failed + 1))
}

# kernel_news prints (and clears) the kernel log lines that matter here:
# nbd timeouts and dead connections, I/O errors, the OOM killer.
kernel_news() {
	dmesg -c 2>/dev/null | grep -iE 'nbd|zram|i/o error|out of memory|oom|killed process|swap|blocked for more' |
		sed 's/^/## kernel: /' | head -40 || true
}

# ---- the NBD server -------------------------------------------------------

start_server() { # $1: phase name, used for nbdkit's stats file
	rm -f "$SOCK"
	case $SERVER in
	uzram)
		# stderr to the console: warnings, and the goroutine dump guest-init
		# asks for when the run hangs, must reach the host.
		# shellcheck disable=SC2086 # UZRAM_FLAGS and SERVER_WRAP are lists of words
		${SERVER_WRAP:-} "$B/uzram" serve --size "$DEV_SIZE" --algorithm lz4 --name uzram0 --socket "$SOCK" ${UZRAM_FLAGS:-} ${SERVE_EXTRA:-} >"$SRVLOG" 2>/dev/console &
		;;
	nbdkit)
		# zstd allocator: the stock memory plugin stores pages raw and
		# cannot be swap for twice the RAM it lives in. The stats filter
		# records the request mix the kernel sends.
		nbdkit -f -U "$SOCK" -e uzram0 --filter=stats memory size="$DEV_SIZE" allocator=zstd \
			statsfile="/run/uzram/stats-$1.txt" statsthreshold=100 >"$SRVLOG" 2>&1 &
		;;
	*)
		echo "unknown SERVER=$SERVER" >&2
		return 1
		;;
	esac
	srv_pid=$!
	await_server -S "$SOCK" "$SERVER did not open $SOCK"
}

# await_server TEST PATH MESSAGE waits up to 10 s for `test TEST PATH` (the
# server's socket, or its block device) while the server lives; else it
# shows the server's log and fails with MESSAGE.
await_server() {
	for _ in $(seq 100); do
		test "$1" "$2" && return 0
		kill -0 "$srv_pid" 2>/dev/null || break
		sleep 0.1
	done
	cat "$SRVLOG"
	fail "$3"
	return 1
}

# server_stat prints the server's latest "mm_stat ..." and "io_stat ..."
# lines after asking for them with SIGUSR1 (uzram only).
server_stat() {
	[ "$SERVER" = uzram ] || return 0
	local n
	n=$(grep -c '^mm_stat ' "$SRVLOG" || true)
	kill -USR1 "$srv_pid"
	for _ in $(seq 50); do
		[ "$(grep -c '^mm_stat ' "$SRVLOG" || true)" -gt "$n" ] && break
		sleep 0.1
	done
	grep '^mm_stat ' "$SRVLOG" | tail -1
	grep '^io_stat ' "$SRVLOG" | tail -1
}

# start_ublk_server serves uzram0 as /dev/ublkb0 (no socket).
start_ublk_server() {
	rm -f "$SOCK"
	# shellcheck disable=SC2086 # UZRAM_FLAGS is a list of words
	"$B/uzram" serve --size "$DEV_SIZE" --algorithm lz4 --name uzram0 --ublk --ublk-id 0 ${UZRAM_FLAGS:-} ${SERVE_EXTRA:-} >"$SRVLOG" 2>/dev/console &
	srv_pid=$!
	await_server -b "$UBLK" "uzram did not serve $UBLK"
}

stop_server() {
	[ -n "$srv_pid" ] || return 0
	kill -TERM "$srv_pid" 2>/dev/null || true
	local rc=0
	wait "$srv_pid" || rc=$?
	srv_pid=
	[ "$rc" = 0 ] || fail "$SERVER exited with status $rc"
	log "$SERVER output:"
	sed 's/^/##   /' "$SRVLOG"
}

# span T0 T1: seconds between two `date +%s.%N` stamps, one decimal.
span() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# io_flusher_threads prints "flagged/total" threads of a process that carry
# PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE (what PR_SET_IO_FLUSHER sets).
io_flusher_threads() {
	local t flags n=0 total=0
	for t in /proc/"$1"/task/*/stat; do
		flags=$(sed 's/.*) //' "$t" | awk '{print $7}')
		total=$((total + 1))
		if (((flags & 0x180000) == 0x180000)); then n=$((n + 1)); fi
	done
	echo "$n/$total"
}

# rt_threads prints how many of the server's threads run SCHED_RR (policy 2,
# field 41 of stat), out of all.
rt_threads() {
	local t n=0 total=0
	for t in /proc/"$1"/task/*/stat; do
		total=$((total + 1))
		if [ "$(sed 's/.*) //' "$t" | awk '{print $39}')" = 2 ]; then n=$((n + 1)); fi
	done
	echo "$n/$total"
}

attach() {
	# shellcheck disable=SC2086 # NBD_FLAGS is a list of words
	nbd-client -unix "$SOCK" -N uzram0 $NBD_FLAGS /dev/nbd0
	for _ in $(seq 50); do
		if [ "$(cat /sys/block/nbd0/size)" != 0 ]; then
			# Writeback throttling would hold swap writes back behind a
			# latency target that a userspace server under TCG misses.
			echo 0 >/sys/block/nbd0/queue/wbt_lat_usec
			# 6.1's nbd capped requests at 128 KiB (max_sectors 256);
			# 6.12's lost that cap (the block layer's default, 1280 KiB),
			# and the server prefaults buffers for 128 KiB requests: a
			# 1280 KiB swap write under memory pressure got ENOSPC, then
			# the connection died. Keep 6.1's size.
			nbd_max_sectors_kb_default=$(cat /sys/block/nbd0/queue/max_sectors_kb)
			if [ "$nbd_max_sectors_kb_default" -gt 128 ]; then
				echo 128 >/sys/block/nbd0/queue/max_sectors_kb
			fi
			return 0
		fi
		sleep 0.1
	done
	fail "nbd0 did not come up"
	return 1
}

detach() {
	nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
	for _ in $(seq 50); do
		[ "$(cat /sys/block/nbd0/size)" = 0 ] && return 0
		sleep 0.1
	done
}

# ---- the two devices, behind one interface --------------------------------

# dev_mm_stat prints the device's mm_stat columns (no label).
dev_mm_stat() {
	case $1 in
	nbd0 | ublkb0) server_stat | awk '/^mm_stat / {$1 = ""; print substr($0, 2)}' ;;
	zram0) cat /sys/block/zram0/mm_stat ;;
	esac
}

dev_io_stat() {
	case $1 in
	nbd0 | ublkb0) server_stat | awk '/^io_stat / {$1 = ""; print substr($0, 2)}' ;;
	zram0) cat /sys/block/zram0/io_stat ;;
	esac
}

# request_mix prints what the block layer sent the device between two
# snapshots of /sys/block/DEV/stat: counts and mean sizes of reads, writes,
# discards, and the number of flushes.
request_mix() { # $1 name, $2 stat before, $3 stat after
	awk -v name="$1" -v a="$2" -v b="$3" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		for (i = 1; i <= 17; i++) d[i] = y[i] - x[i]
		printf "@@ requests dev=%s reads=%d read_avg_kib=%.1f writes=%d write_avg_kib=%.1f discards=%d discard_avg_kib=%.1f discard_mib=%.1f flushes=%d\n",
			name, d[1], d[1] ? d[3] / 2 / d[1] : 0, d[5], d[5] ? d[7] / 2 / d[5] : 0,
			d[12], d[12] ? d[14] / 2 / d[12] : 0, d[14] / 2048, d[16]
	}'
}

# ---- the memory workload ---------------------------------------------------

# swap_phase NAME DEV: swap on DEV, fill and check WORKLOAD, snapshot the
# device while full, after the workload freed its memory, after swapoff.
swap_phase() {
	local name=$1 dev=$2 workload=${3:-$WORKLOAD} mc wd t0 t1 full freed off stat0 stat1 rc=0 mlog=/run/memcheck-$1.log
	log "$name: swap on /dev/$dev, workload $workload in ${GUEST_MEM_MIB} MiB of RAM"
	mkswap "/dev/$dev" >/dev/null
	swapon --discard=pages "/dev/$dev"
	grep . /proc/swaps | sed 's/^/## /'
	stat0=$(cat "/sys/block/$dev/stat")
	# Progress every 5 s, so a stall shows where it stalled.
	(while sleep 5; do
		awk -v n="$name" '/^(MemFree|SwapTotal|SwapFree):/ {m[$1] = $2}
			END {printf "## %s: free %d MiB, swap used %d MiB\n", n, m["MemFree:"] / 1024, (m["SwapTotal:"] - m["SwapFree:"]) / 1024}' /proc/meminfo
	done) &
	local mon=$!
	t0=$(date +%s.%N)
	GODEBUG=$WORKLOAD_GODEBUG "$B/memcheck" -size "$workload" -hold >"$mlog" 2>&1 &
	mc=$!
	# Stream its progress to the console; tail ends when memcheck does.
	tail -n +1 -f --pid="$mc" "$mlog" | sed -u 's/^/## /' &
	local tailer=$!
	# A watchdog rather than timeout(1): memcheck must get our SIGUSR1.
	(sleep "$MEMCHECK_TIMEOUT" && kill -KILL "$mc" 2>/dev/null && echo "## $name: memcheck killed after ${MEMCHECK_TIMEOUT}s") &
	wd=$!
	while kill -0 "$mc" 2>/dev/null && ! grep -q '^memcheck: holding' "$mlog"; do
		sleep 0.5
	done
	t1=$(date +%s.%N)
	kill "$mon" 2>/dev/null || true
	full=$(dev_mm_stat "$dev")
	say "mm_stat dev=$name when=full $full"
	case $dev in nbd0 | ublkb0) say "server dev=$name rss_kib=$(rss_kib "$srv_pid") io_flusher_threads=$(io_flusher_threads "$srv_pid") rt_threads=$(rt_threads "$srv_pid")" ;; esac
	kill -USR1 "$mc" 2>/dev/null || true
	wait "$mc" || rc=$?
	kill "$wd" 2>/dev/null || true
	wait "$wd" 2>/dev/null || true
	wait "$tailer" || true
	sleep 2 # let swap's discard work run
	freed=$(dev_mm_stat "$dev")
	say "mm_stat dev=$name when=after_free $freed"
	swapoff "/dev/$dev"
	off=$(dev_mm_stat "$dev")
	say "mm_stat dev=$name when=after_swapoff $off"
	# Swap discards a 2 MiB cluster only once all of it is free, and not
	# during swapoff: clusters shared with other processes' pages stay
	# stored. An admin (and `uzram swapoff`) discards the whole device then;
	# zram needs nothing, it hears of every freed slot. -f: the swap
	# signature is still there, and blkdiscard refuses to wipe it otherwise.
	local bd
	bd=$(blkdiscard -f -v "/dev/$dev" 2>&1) || true
	log "$name: blkdiscard: $bd"
	local disc
	disc=$(dev_mm_stat "$dev")
	say "mm_stat dev=$name when=after_blkdiscard $disc"
	local io refused kerr
	io=$(dev_io_stat "$dev")
	say "io_stat dev=$name $io"
	refused=$(echo "$io" | awk '{print $2 + 0}')
	# What an admin reading the log would call swap errors: writes the
	# device refused, and the kernel's own I/O error lines.
	kerr=$(dmesg 2>/dev/null | grep -ciE 'i/o error|returned error|critical space allocation|write-error on swap' || true)
	stat1=$(cat "/sys/block/$dev/stat")
	request_mix "$name" "$stat0" "$stat1"
	kernel_news

	local result peak elapsed
	result=$(sed -n 's/^memcheck: result=\([A-Z]*\).*/\1/p' "$mlog")
	peak=$(sed -n 's/.*peak_swap_kib=\([0-9]*\).*/\1/p' "$mlog")
	elapsed=$(span "$t0" "$t1")
	if [ "$rc" != 0 ] || [ "$result" != PASS ]; then
		fail "$name: memcheck status $rc result ${result:-none}"
		result=FAIL
	fi
	# Ratio while full; pages freed between full and after swapoff (zram:
	# slot-free notifications; NBD: only TRIM can free them).
	awk -v name="$name" -v res="$result" -v peak="${peak:-0}" -v el="$elapsed" -v ref="${refused:-0}" -v kerr="${kerr:-0}" \
		-v full="$full" -v freed="$freed" -v off="$off" -v disc="$disc" 'BEGIN {
		nf = split(full, f, " "); split(freed, r, " "); split(off, o, " "); split(disc, q, " ")
		if (nf < 3) {
			printf "@@ summary dev=%s memcheck=%s peak_swap_mib=%.0f elapsed_s=%s ratio=n/a stored_mib=n/a mem_used_mib=n/a trim_freed_pages=n/a after_free_mib=n/a after_swapoff_mib=n/a after_blkdiscard_mib=n/a\n", name, res, peak / 1024, el
			exit
		}
		printf "@@ summary dev=%s memcheck=%s peak_swap_mib=%.0f elapsed_s=%s ratio=%.2f stored_mib=%.0f mem_used_mib=%.0f trim_freed_pages=%d after_free_mib=%.1f after_swapoff_mib=%.1f after_blkdiscard_mib=%.1f refused_writes=%d kernel_io_errors=%d\n",
			name, res, peak / 1024, el, f[2] ? f[1] / f[2] : 0, f[1] / 1048576, f[3] / 1048576,
			(f[1] - o[1]) / 4096, r[1] / 1048576, o[1] / 1048576, q[1] / 1048576, ref, kerr
	}'
}

# ---- fio ---------------------------------------------------------------------

# fio_phase NAME DEV: 4k random writes with crc32c verification read back,
# then 4k random reads verifying the same blocks. Prints IOPS and verdicts.
fio_phase() {
	local name=$1 dev=/dev/$2 w r wrc=0 rrc=0 common
	# verify_state_save=0: the root is read-only, and the read job checks
	# the blocks through their own headers anyway.
	common="--filename=$dev --bs=4k --size=$FIO_SIZE --ioengine=libaio --iodepth=16 --direct=1
		--verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=terse --terse-version=3"
	log "$name: fio 4k randwrite+verify then randread+verify over $FIO_SIZE of $dev"
	# shellcheck disable=SC2086 # common is a list of words
	w=$(timeout "$FIO_TIMEOUT" fio --name=randwrite --rw=randwrite --do_verify=1 $common 2>&1) || wrc=$?
	# shellcheck disable=SC2086
	r=$(timeout "$FIO_TIMEOUT" fio --name=randread --rw=randread $common 2>&1) || rrc=$?
	# Terse v3: field 5 error, 8 read IOPS, 49 write IOPS.
	local wiops viops riops werr rerr
	wiops=$(echo "$w" | awk -F';' '/^3;/ {print $49}')
	viops=$(echo "$w" | awk -F';' '/^3;/ {print $8}')
	werr=$(echo "$w" | awk -F';' '/^3;/ {print $5}')
	riops=$(echo "$r" | awk -F';' '/^3;/ {print $8}')
	rerr=$(echo "$r" | awk -F';' '/^3;/ {print $5}')
	echo "$w" "$r" | grep -v '^3;' | sed 's/^/## fio: /' | head -20 || true
	local wv=PASS rv=PASS
	if [ "$wrc" != 0 ] || [ "${werr:-1}" != 0 ]; then
		wv=FAIL
		fail "$name: fio randwrite status $wrc error ${werr:-none}"
	fi
	if [ "$rrc" != 0 ] || [ "${rerr:-1}" != 0 ]; then
		rv=FAIL
		fail "$name: fio randread status $rrc error ${rerr:-none}"
	fi
	local mv=n/a m mrc=0
	if [ "${3:-}" = mixed ]; then
		# Every request size the block layer may send, 512 B to 128 KiB, at
		# any sector: sub-page writes are read-modify-write in the store.
		# shellcheck disable=SC2086 # a list of words, the 4k size dropped
		m=$(timeout "$FIO_TIMEOUT" fio --name=mixed --rw=randwrite --bsrange=512-128k --do_verify=1 \
			${common/--bs=4k/} 2>&1) || mrc=$?
		mv=PASS
		if [ "$mrc" != 0 ] || [ "$(echo "$m" | awk -F';' '/^3;/ {print $5}')" != 0 ]; then
			mv=FAIL
			fail "$name: fio mixed 512 B..128 KiB write+verify status $mrc: $(echo "$m" | tail -2)"
		fi
	fi
	say "fio dev=$name randwrite_verify=$wv randwrite_iops=${wiops:-0} verify_read_iops=${viops:-0} randread_verify=$rv randread_iops=${riops:-0} mixed_verify=$mv"
	kernel_news
}

# ---- swap in one command: the CLI (issue 7) --------------------------------

# check NAME CMD...: run CMD, record a failure under NAME when it fails.
check() {
	local what=$1
	shift
	if "$@"; then return 0; fi
	fail "cli: $what"
	return 1
}

# cli_phase: one daemon with no device, then what an admin types: uzram
# swapon/swapoff, --find + attach + a filesystem + detach + --reset, and
# uzram setup from a config file. Every step is checked against the kernel's
# view (/proc/swaps, /sys/block, /proc/mounts), not only uzram's.
cli_phase() {
	local dir=/run/uzram-cli out name nbd dev list rc f0=$failed
	mkdir -p "$dir"
	export UZRAM_CONTROL=$dir/control.sock
	"$B/uzram" serve --no-device --socket-dir "$dir" >"$dir/server.log" 2>&1 &
	local pid=$!
	for _ in $(seq 100); do [ -S "$UZRAM_CONTROL" ] && break; sleep 0.1; done
	U() { "$B/uzram" "$@"; }

	out=$(U swapon --size 256M --priority 100 --recomp-algorithm zstd 2>&1) || fail "cli: swapon: $out"
	read -r name nbd <<<"$out"
	log "cli: uzram swapon --size 256M --priority 100 -> $out"
	dev=${nbd#/dev/}
	# shellcheck disable=SC2016 # awk's own fields
	check "swapon: $nbd not in /proc/swaps with priority 100" \
		awk -v d="$nbd" '$1 == d && $5 == 100 {ok = 1} END {exit !ok}' /proc/swaps
	list=$(U --output NAME,DISKSIZE,MOUNTPOINT --noheadings --raw)
	log "cli: uzram -> $list"
	check "list: $name not shown as [SWAP]" grep -q "^$name 256M \[SWAP\]$" <<<"$list"
	check "swapon: wbt not off on $dev" grep -qx 0 "/sys/block/$dev/queue/wbt_lat_usec"
	check "swapon: request timeout of $dev not 600 s" grep -qx 600000 "/sys/block/$dev/queue/io_timeout"
	out=$(U --reset "$name" 2>&1) && rc=0 || rc=$?
	log "cli: uzram --reset $name while swap -> status $rc: $out"
	[ "$rc" != 0 ] || fail "cli: --reset of a device in use succeeded"
	out=$(U swapoff "$name" 2>&1) || fail "cli: swapoff: $out"
	check "swapoff: $nbd still in /proc/swaps" sh -c "! grep -q '^$nbd ' /proc/swaps"
	check "swapoff: $nbd still connected" grep -qx 0 "/sys/block/$dev/size"
	check "swapoff: $name still listed" sh -c "! '$B/uzram' -n -o NAME | grep -qx '$name'"

	name=$(U --find --size 64M --algorithm zstd) || fail "cli: --find"
	nbd=$(U attach "$name" 2>&1) || fail "cli: attach: $nbd"
	dev=${nbd#/dev/}
	log "cli: uzram --find --size 64M --algorithm zstd -> $name; uzram attach $name -> $nbd"
	check "attach: $nbd has no size" sh -c "[ \$(cat /sys/block/$dev/size) = 131072 ]"
	check "attach: request timeout of $dev not 600 s" grep -qx 600000 "/sys/block/$dev/queue/io_timeout"
	out=$(fio --name=cli --filename="$nbd" --rw=randwrite --bs=4k --size=16M --ioengine=libaio --iodepth=8 \
		--direct=1 --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
		--output-format=terse --terse-version=3 2>&1) || fail "cli: fio on $nbd"
	[ "$(echo "$out" | awk -F';' '/^3;/ {print $5}')" = 0 ] || fail "cli: fio verify on $nbd: $out"
	mkdir -p /run/mnt
	modprobe ext4 2>/dev/null || true
	if mkfs.ext4 -q "$nbd" && mount "$nbd" /run/mnt; then
		echo hello >/run/mnt/f && sync
		list=$(U --output NAME,MOUNTPOINT --noheadings --raw)
		log "cli: mounted -> $list"
		check "list: $name not shown at /run/mnt" grep -q "^$name /run/mnt$" <<<"$list"
		umount /run/mnt
	else
		fail "cli: mkfs.ext4/mount on $nbd"
	fi
	out=$(U detach "$name" 2>&1) || fail "cli: detach: $out"
	check "detach: $nbd still connected" grep -qx 0 "/sys/block/$dev/size"
	out=$(U --reset "$name" 2>&1) || fail "cli: --reset after detach: $out"

	printf '[uzram5]\nzram-size = ram / 4\ncompression-algorithm = lz4 (zstd)\nswap-priority = 50\n' >"$dir/uzram.conf"
	out=$(U setup --config "$dir/uzram.conf" 2>&1) || fail "cli: setup: $out"
	log "cli: uzram setup --config (uzram5, ram / 4, lz4 (zstd), priority 50) -> $out"
	nbd=$(U -n --raw -o NAME,MOUNTPOINT | awk '$1 == "uzram5" {print $1}')
	check "setup: uzram5 not created" [ -n "$nbd" ]
	# shellcheck disable=SC2016 # awk's own fields
	check "setup: no swap with priority 50" awk '$5 == 50 {ok = 1} END {exit !ok}' /proc/swaps
	out=$(U swapoff uzram5 2>&1) || fail "cli: swapoff uzram5: $out"

	kill -TERM "$pid"
	wait "$pid" || fail "cli: daemon exited with status $?"
	unset UZRAM_CONTROL
	sed 's/^/##   /' "$dir/server.log" | tail -20
	kernel_news
	say "cli result=$([ "$failed" = "$f0" ] && echo PASS || echo FAIL)"
}

# ublk_cli_phase: the same as an admin would type it with --ublk: swapon
# (no nbd-client: the daemon serves /dev/ublkbN), the listing's DEVICE and
# MOUNTPOINT, reset and stop refused while the node is swap, swapoff,
# --find with a filesystem, setup with transport = ublk, and uzram stop.
ublk_cli_phase() {
	local dir=/run/uzram-ublkcli out name node list rc f0=$failed
	mkdir -p "$dir"
	export UZRAM_CONTROL=$dir/control.sock
	"$B/uzram" serve --no-device --socket-dir "$dir" >"$dir/server.log" 2>&1 &
	local pid=$!
	for _ in $(seq 100); do [ -S "$UZRAM_CONTROL" ] && break; sleep 0.1; done
	U() { "$B/uzram" "$@"; }

	out=$(U swapon --ublk --size 256M --priority 100 2>&1) || fail "ublkcli: swapon --ublk: $out"
	read -r name node <<<"$out"
	log "ublkcli: uzram swapon --ublk --size 256M --priority 100 -> $out"
	case $node in /dev/ublkb[0-9]*) ;; *) fail "ublkcli: swapon --ublk printed node '$node'" ;; esac
	# shellcheck disable=SC2016 # awk's own fields
	check "ublk swapon: $node not in /proc/swaps with priority 100" \
		awk -v d="$node" '$1 == d && $5 == 100 {ok = 1} END {exit !ok}' /proc/swaps
	list=$(U --output NAME,DEVICE,MOUNTPOINT --noheadings --raw)
	log "ublkcli: uzram -> $list"
	check "ublk list: $name not shown on $node as [SWAP]" grep -q "^$name $node \[SWAP\]$" <<<"$list"
	check "ublk swapon: wbt not off on $node" grep -qx 0 "/sys/block/${node#/dev/}/queue/wbt_lat_usec"
	out=$(U --reset "$name" 2>&1) && rc=0 || rc=$?
	log "ublkcli: uzram --reset $name while swap -> status $rc: $out"
	[ "$rc" != 0 ] || fail "ublkcli: --reset of a ublk device in use succeeded"
	out=$(U stop 2>&1) && rc=0 || rc=$?
	log "ublkcli: uzram stop while swap -> status $rc: $out"
	[ "$rc" != 0 ] || fail "ublkcli: uzram stop with a ublk swap succeeded"
	kill -TERM "$pid"
	sleep 1
	check "ublkcli: SIGTERM with a ublk swap stopped the daemon" kill -0 "$pid"
	out=$(U swapoff "$name" 2>&1) || fail "ublkcli: swapoff: $out"
	check "ublk swapoff: $node still in /proc/swaps" sh -c "! grep -q '^$node ' /proc/swaps"
	check "ublk swapoff: $name still listed" sh -c "! '$B/uzram' -n -o NAME | grep -qx '$name'"
	check "ublk swapoff: $node still exists" sh -c "! [ -b $node ]"

	name=$(U --find --size 64M --ublk) || fail "ublkcli: --find --ublk"
	node=$(U -n --raw -o NAME,DEVICE | awk -v n="$name" '$1 == n {print $2}')
	log "ublkcli: uzram --find --size 64M --ublk -> $name on $node"
	check "find --ublk: $node has no size" sh -c "[ \$(cat /sys/block/${node#/dev/}/size) = 131072 ]"
	mkdir -p /run/mnt
	modprobe ext4 2>/dev/null || true
	if mkfs.ext4 -q "$node" && mount "$node" /run/mnt; then
		echo hello >/run/mnt/f && sync
		list=$(U --output NAME,MOUNTPOINT --noheadings --raw)
		check "ublk list: $name not shown at /run/mnt" grep -q "^$name /run/mnt$" <<<"$list"
		out=$(U --reset "$name" 2>&1) && rc=0 || rc=$?
		[ "$rc" != 0 ] || fail "ublkcli: --reset of a mounted ublk device succeeded"
		umount /run/mnt
	else
		fail "ublkcli: mkfs.ext4/mount on $node"
	fi
	out=$(U --reset "$name" 2>&1) || fail "ublkcli: --reset: $out"

	printf '[uzram6]\nzram-size = ram / 4\ncompression-algorithm = lz4\nswap-priority = 50\ntransport = ublk\n' >"$dir/uzram.conf"
	out=$(U setup --config "$dir/uzram.conf" 2>&1) || fail "ublkcli: setup: $out"
	log "ublkcli: uzram setup --config (uzram6, transport = ublk, priority 50) -> $out"
	node=$(U -n --raw -o NAME,DEVICE | awk '$1 == "uzram6" {print $2}')
	# shellcheck disable=SC2016 # awk's own fields
	check "ublk setup: uzram6 not swap on a ublk node with priority 50" \
		awk -v d="$node" '$1 == d && $5 == 50 && d ~ /ublkb/ {ok = 1} END {exit !ok}' /proc/swaps
	out=$(U swapoff uzram6 2>&1) || fail "ublkcli: swapoff uzram6: $out"

	out=$(U stop 2>&1) || fail "ublkcli: uzram stop: $out"
	wait "$pid" || fail "ublkcli: daemon exited with status $?"
	unset UZRAM_CONTROL
	sed 's/^/##   /' "$dir/server.log" | tail -20
	kernel_news
	say "ublkcli result=$([ "$failed" = "$f0" ] && echo PASS || echo FAIL)"
}

# ---- a daemon restart under an attached device (issue 9) ---------------------

# restart_phase: attach with nbd-client's ioctl mode and -persist (it stays
# and reconnects when the server comes back), write with verification, stop
# the server (SIGTERM saves its state file), look at the device while no
# server runs, start it again from the state file, and verify every block.
restart_phase() {
	local state=/run/uzram/state.img fpid out rc t0 gap r0
	local job=(--name=restart --filename=/dev/nbd0 --rw=randwrite --bs=4k --size=16M --ioengine=libaio
		--iodepth=8 --direct=1 --verify=crc32c --verify_fatal=1 --verify_state_save=0
		--output-format=terse --terse-version=3)
	rm -f "$state"
	SERVE_EXTRA="--state-file $state" start_server restart || return 1
	nbd-client -unix "$SOCK" -N uzram0 -b 4096 -t 600 -nonetlink -persist /dev/nbd0 >/dev/null 2>&1 ||
		{ fail "restart: nbd-client -nonetlink -persist"; return 1; }
	for _ in $(seq 50); do [ "$(cat /sys/block/nbd0/size)" != 0 ] && break; sleep 0.1; done
	out=$(fio "${job[@]}" --do_verify=1 2>&1) || true
	[ "$(echo "$out" | awk -F';' '/^3;/ {print $5}')" = 0 ] || fail "restart: fio write+verify: $out"
	stop_server
	log "restart: state file $(stat -c %s "$state" 2>/dev/null || echo missing) bytes"
	# The device with no server behind it: what does the kernel make of it?
	sleep 1
	local size_gap
	size_gap=$(cat /sys/block/nbd0/size)
	out=$(timeout 20 dd if=/dev/nbd0 of=/dev/null bs=4k count=1 iflag=direct 2>&1) && r0=ok || r0="status $?"
	r0="$r0, $(echo "$out" | tail -1 | cut -d, -f1), size $size_gap sectors"
	log "restart: read with no server: $r0"
	SERVE_EXTRA="--state-file $state" start_server restart || return 1
	t0=$SECONDS
	gap=none
	# nbd-client -persist is meant to notice the server is back and set the
	# device up again (it would have its size once more).
	# nbd-client retries its connection every second: 15 s is plenty.
	for _ in $(seq 15); do
		if [ "$(cat /sys/block/nbd0/size)" != 0 ]; then gap=$((SECONDS - t0)); break; fi
		sleep 1
	done
	local client=gone
	pgrep -x nbd-client >/dev/null && client=running
	log "restart: nbd-client -persist reconnected: ${gap} (after $((SECONDS - t0)) s; the client is $client)"
	local reattach=no
	if [ "$gap" = none ]; then
		# What an admin does then: attach again. The data is what matters.
		nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
		[ "$client" = running ] && { pkill -x nbd-client || true; }
		nbd-client -unix "$SOCK" -N uzram0 -b 4096 -t 600 /dev/nbd0 >/dev/null 2>&1 || fail "restart: attach again"
		for _ in $(seq 50); do [ "$(cat /sys/block/nbd0/size)" != 0 ] && break; sleep 0.1; done
		reattach=yes
	fi
	out=$(fio "${job[@]}" --verify_only=1 2>&1) && rc=0 || rc=$?
	local verdict=FAIL
	if [ "$rc" = 0 ] && [ "$(echo "$out" | awk -F';' '/^3;/ {print $5}')" = 0 ]; then
		verdict=PASS
	else
		fail "restart: fio verify after restart: $(echo "$out" | tail -3)"
	fi
	say "restart read_without_server=\"$r0\" persist_reconnect_s=$gap attached_again=$reattach verify_after_restart=$verdict"
	nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
	# A -persist client that outlived -d (this is the guest: nothing else
	# runs nbd-client here).
	fpid=$(pgrep -x nbd-client || true)
	# shellcheck disable=SC2086 # a list of pids
	[ -n "$fpid" ] && kill $fpid 2>/dev/null
	stop_server
	kernel_news
}

# ---- a takeover under swap: the kernel's sockets change hands -------------------

# takeover_phase: swap on uzram under a workload held to TAKEOVER_MEMMAX by
# its memory cgroup, so its pages go to swap while the machine keeps memory
# available for the copy of the store the takeover goes through (a daemon
# with too little refuses, and the first run here showed 3 MiB available
# with the whole guest's RAM in use). While the workload checks every page again
# (swap-ins and swap-outs in flight), a new `uzram serve --takeover`
# replaces the daemon, and then SIGUSR2 makes that one re-execute in place.
# The kernel's nbd connections must never drop and every page must read
# back right.
# With "ublk" the device is /dev/ublkb0 and the kernel holds its requests
# while the node changes servers (USER_RECOVERY).
takeover_phase() {
	local tr=${1:-nbd} name=takeover dev=/dev/nbd0 flags=(--socket "$SOCK")
	if [ "$tr" = ublk ]; then
		name=ublktakeover dev=$UBLK flags=(--ublk --ublk-id 0)
	fi
	local state=/run/uzram/state.img mlog=/run/memcheck-$name.log newerr=/run/uzram/$name.err
	local cg=/sys/fs/cgroup/$name mc old new t0 t1 rc=0 result took=none swap_kib avail_kib old_rc=none
	rm -f "$state" "$newerr"
	if [ "$tr" = ublk ]; then
		start_ublk_server || return 1
	else
		SERVE_EXTRA="--state-file $state" start_server takeover || return 1
		attach
	fi
	mkswap "$dev" >/dev/null
	swapon --discard=pages "$dev"
	mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
	echo +memory >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
	mkdir -p "$cg"
	echo "$TAKEOVER_MEMMAX" >"$cg/memory.max"
	(echo "$BASHPID" >"$cg/cgroup.procs" && GODEBUG=$WORKLOAD_GODEBUG exec "$B/memcheck" -size "$TAKEOVER_WORKLOAD" -hold -recheck) >"$mlog" 2>&1 &
	mc=$!
	tail -n +1 -f --pid="$mc" "$mlog" | sed -u "s/^/## $name: /" &
	local tailer=$!
	for _ in $(seq "$MEMCHECK_TIMEOUT"); do
		grep -q '^memcheck: holding' "$mlog" && break
		kill -0 "$mc" 2>/dev/null || break
		sleep 1
	done
	swap_kib=$(awk '/^(SwapTotal|SwapFree):/ {m[$1] = $2} END {print m["SwapTotal:"] - m["SwapFree:"]}' /proc/meminfo)
	avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
	log "$name: memcheck holds $TAKEOVER_WORKLOAD in $TAKEOVER_MEMMAX, swap used ${swap_kib} KiB, ${avail_kib} KiB available"
	kill -USR1 "$mc" 2>/dev/null || true # check again: swap traffic through the takeover
	sleep 1
	old=$srv_pid
	t0=$(date +%s.%N)
	# shellcheck disable=SC2086 # UZRAM_FLAGS is a list of words
	"$B/uzram" serve --size "$DEV_SIZE" --algorithm lz4 --name uzram0 "${flags[@]}" ${UZRAM_FLAGS:-} \
		--state-file "$state" --takeover >>"$SRVLOG" 2>"$newerr" &
	new=$!
	tail -n +1 -f --pid="$new" "$newerr" | sed -u 's/^/## new daemon: /' &
	for _ in $(seq 1200); do
		if [ "$took" = none ] && grep -q 'took over' "$newerr"; then
			t1=$(date +%s.%N)
			took=$(span "$t0" "$t1")
		fi
		if [ "$old_rc" = none ] && ! kill -0 "$old" 2>/dev/null; then
			old_rc=0
			wait "$old" || old_rc=$?
		fi
		[ "$took" != none ] && [ "$old_rc" != none ] && break
		kill -0 "$new" 2>/dev/null || break
		sleep 0.1
	done
	local reexec=none
	if [ "$took" != none ]; then
		srv_pid=$new
		# And SIGUSR2, in place (systemd's reload), while the check still runs.
		sleep 1
		t0=$(date +%s.%N)
		kill -USR2 "$new"
		for _ in $(seq 600); do
			if [ "$(grep -c 'took over' "$newerr")" -ge 2 ]; then
				t1=$(date +%s.%N)
				reexec=$(span "$t0" "$t1")
				break
			fi
			kill -0 "$new" 2>/dev/null || break
			sleep 0.1
		done
		[ "$reexec" != none ] || fail "$name: SIGUSR2 did not re-execute the daemon: $(tail -1 "$newerr")"
	else
		fail "$name: the new daemon did not take over: $(tail -1 "$newerr")"
		kill -0 "$new" 2>/dev/null && kill "$new"
	fi
	[ "$old_rc" = 0 ] || fail "$name: old daemon exit status $old_rc"
	wait "$mc" || rc=$?
	wait "$tailer" || true
	result=$(sed -n 's/^memcheck: result=\([A-Z]*\).*/\1/p' "$mlog")
	if [ "$rc" != 0 ] || [ "$result" != PASS ]; then
		fail "$name: memcheck status $rc result ${result:-none}"
		result=FAIL
	fi
	rmdir "$cg" 2>/dev/null || true
	local size kerr
	size=$(cat "/sys/block/${dev#/dev/}/size")
	kerr=$(dmesg 2>/dev/null | grep -ciE 'i/o error|returned error|critical space allocation|write-error on swap' || true)
	swapoff "$dev" || fail "$name: swapoff"
	[ "$tr" = ublk ] || detach
	stop_server
	kernel_news
	say "$name memcheck=$result took_s=$took reexec_s=$reexec old_exit=$old_rc swap_kib=$swap_kib available_kib=$avail_kib sectors_after=$size kernel_io_errors=$kerr"
}

# ---- the run -----------------------------------------------------------------

log "guest up: $(uname -r), $(nproc) CPUs, $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) KiB RAM, server $SERVER"
dmesg -c >/dev/null 2>&1 || true
ip link set lo up
# Prefer swapping anonymous pages to dropping file pages: every binary here
# comes over 9p, and refaulting code under pressure stalls the guest. Both
# devices run with this; zram setups commonly use 100 or more.
sysctl -qw vm.swappiness=100
# No swap readahead (as zram setups do): under this much pressure pages read
# ahead are evicted before use, and the guest thrashes to a standstill.
sysctl -qw vm.page-cluster="$PAGE_CLUSTER"
# Name blocked tasks early; "echo w" to sysrq (guest-init) prints their stacks.
sysctl -qw kernel.hung_task_timeout_secs=30
# guest-swap.sh presses alt-sysrq-t through qemu when the run hangs.
sysctl -qw kernel.sysrq=1
# Headroom for a userspace swap server: kswapd starts reclaiming well before
# the min watermark, below which the server's own page faults would wait on
# the very swap writes they are meant to serve. Kernel zram gets the same.
sysctl -qw vm.min_free_kbytes=32768 vm.watermark_scale_factor=200
# The multi-generational LRU: Debian's 6.12 turns it on at boot
# (CONFIG_LRU_GEN_ENABLED), its 6.1 leaves it off. LRU_GEN=n or y sets it.
if [ -n "${LRU_GEN:-}" ] && [ -w /sys/kernel/mm/lru_gen/enabled ]; then
	echo "$LRU_GEN" >/sys/kernel/mm/lru_gen/enabled
fi
say "mm lru_gen=$(cat /sys/kernel/mm/lru_gen/enabled 2>/dev/null || echo absent) thp=\"$(cat /sys/kernel/mm/transparent_hugepage/enabled)\""
# Module autoloading would run the initramfs's modprobe, not this root's:
# load what the run needs by hand.
modprobe nbd nbds_max=2
modprobe lz4
modprobe lz4_decompress 2>/dev/null || true
modprobe zram num_devices=1

if [ -x "$B/swapsafe.test" ]; then
	# The host container lacks CAP_SYS_RESOURCE; the guest's root has it.
	log "swapsafe unit tests as real root:"
	if "$B/swapsafe.test" -test.v -test.count=1 2>&1 | sed 's/^/##   /'; then
		say "swapsafe result=PASS"
	else
		fail "swapsafe tests"
	fi
fi

has() { case " $PHASES " in *" $1 "*) return 0 ;; esac; return 1; }

if has uzram; then
	T0=$SECONDS
	start_server swap
	attach
	say "nbd dev=nbd0 flags=\"$NBD_FLAGS\" max_sectors_kb=$(cat /sys/block/nbd0/queue/max_sectors_kb) kernel_max_sectors_kb=$nbd_max_sectors_kb_default discard_max_bytes=$(cat /sys/block/nbd0/queue/discard_max_bytes) write_cache=\"$(cat /sys/block/nbd0/queue/write_cache)\""
	swap_phase uzram nbd0 || fail "uzram swap phase"
	detach
	stop_server
	[ -f /run/uzram/stats-swap.txt ] && sed 's/^/## nbdkit stats (swap): /' /run/uzram/stats-swap.txt
	say "phase name=uzram_swap seconds=$((SECONDS - T0))"
fi

if has ublk || has ublkfio || has ublkcli || has ublktakeover; then
	modprobe ublk_drv || fail "modprobe ublk_drv"
fi
if [ -x "$B/ublk.test" ] && [ -c /dev/ublk-control ]; then
	log "blockdev/ublk tests against the guest's ublk driver:"
	if (cd /run && "$B/ublk.test" -test.v -test.count=1 2>&1 | sed 's/^/##   /'); then
		say "ublktests result=PASS"
	else
		fail "blockdev/ublk tests"
	fi
fi

if has ublk && [ "$SERVER" = uzram ]; then
	T0=$SECONDS
	if start_ublk_server; then
		say "ublk dev=ublkb0 max_sectors_kb=$(cat /sys/block/ublkb0/queue/max_sectors_kb) discard_max_bytes=$(cat /sys/block/ublkb0/queue/discard_max_bytes) logical_block_size=$(cat /sys/block/ublkb0/queue/logical_block_size)"
		swap_phase ublk ublkb0 "$UBLK_WORKLOAD" || fail "ublk swap phase"
		stop_server
	fi
	say "phase name=ublk_swap seconds=$((SECONDS - T0))"
fi

echo lz4 >/sys/block/zram0/comp_algorithm
echo "$DEV_SIZE" >/sys/block/zram0/disksize
if has zram; then
	T0=$SECONDS
	swap_phase zram zram0 || fail "zram swap phase"
	say "phase name=zram_swap seconds=$((SECONDS - T0))"
fi

if has fio; then
	T0=$SECONDS
	start_server fio
	attach
	fio_phase uzram nbd0
	detach
	stop_server
	[ -f /run/uzram/stats-fio.txt ] && sed 's/^/## nbdkit stats (fio): /' /run/uzram/stats-fio.txt
	fio_phase zram zram0
	say "phase name=fio seconds=$((SECONDS - T0))"
fi

if has ublkfio && [ "$SERVER" = uzram ]; then
	T0=$SECONDS
	if start_ublk_server; then
		fio_phase ublk ublkb0 mixed
		stop_server
	fi
	say "phase name=ublkfio seconds=$((SECONDS - T0))"
fi

if has ublkcli && [ "$SERVER" = uzram ]; then
	T0=$SECONDS
	ublk_cli_phase
	say "phase name=ublkcli seconds=$((SECONDS - T0))"
fi

if has cli && [ "$SERVER" = uzram ]; then
	T0=$SECONDS
	cli_phase
	say "phase name=cli seconds=$((SECONDS - T0))"
fi

if has takeover && [ "$SERVER" = uzram ]; then
	T0=$SECONDS
	takeover_phase
	say "phase name=takeover seconds=$((SECONDS - T0))"
fi

if has ublktakeover && [ "$SERVER" = uzram ]; then
	T0=$SECONDS
	takeover_phase ublk
	say "phase name=ublktakeover seconds=$((SECONDS - T0))"
fi

if has restart && [ "$SERVER" = uzram ]; then
	T0=$SECONDS
	restart_phase
	say "phase name=restart seconds=$((SECONDS - T0))"
fi

say "scenario failed=$failed"
exit $((failed > 0))
