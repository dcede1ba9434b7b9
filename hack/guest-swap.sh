#!/usr/bin/env bash
# guest-swap.sh: prove uzram on the real kernel path. The host kernel has no
# nbd module, so this boots Debian's kernel under qemu (TCG; KVM hangs here)
# with a tiny initramfs that chroots into the host's root over 9p, and runs
# hack/guest-scenario.sh inside: uzram as swap under a workload larger than
# the guest's RAM, attached with nbd-client and served through the kernel's
# ublk driver, the same on the guest kernel's zram, fio with verification on
# each, the CLI, restarts and takeovers. See docs/guest.md.
#
# Environment (all optional):
#   SERVER=auto|uzram|nbdkit  NBD server in the guest (auto: uzram when
#                             `uzram serve` builds, else nbdkit memory zstd)
#   GUEST_MEM_MIB=512         guest RAM; device and workload default to 2x
#   DEV_SIZE, WORKLOAD        e.g. 1G, 1024M
#   NBD_FLAGS                 nbd-client flags after -unix SOCK -N uzram0
#   FIO_SIZE=32M              span of the fio jobs
#   GUEST_TIMEOUT=1200        seconds before the whole VM is killed
#   PHASES="uzram ublk zram fio ublkfio cli ublkcli restart takeover ublktakeover"
#                             which parts to run (uzram: swap on the server over
#                             NBD; ublk: the same as /dev/ublkb0; zram: the
#                             guest kernel's zram; fio, ublkfio: fio with
#                             verification; cli, ublkcli: uzram swapon/attach/
#                             setup; restart: daemon restart with a state file
#                             under nbd-client; takeover, ublktakeover: serve
#                             --takeover and SIGUSR2 under swap). The blockdev/ublk
#                             tests run whenever the guest has ublk.
#   UBLK_WORKLOAD             the ublk swap phase's workload (default: WORKLOAD)
#   TAKEOVER_WORKLOAD=256M, TAKEOVER_MEMMAX=96M  what memcheck holds across the
#                             takeover, and its memory cgroup's limit (the rest swaps).
#                             At 128M, after the ublk phases, the NBD takeover found
#                             92 MiB available where carrying its 32 MiB of stores
#                             needs 98, and refused (the copy's check, by design)
#   UZRAM_FLAGS               extra `uzram serve` flags, e.g. --no-io-flusher
#   MEMCHECK_TIMEOUT=600      seconds one memcheck run may take
#   PAGE_CLUSTER=0            vm.page-cluster in the guest (swap readahead)
#   SERVER_WRAP               a command the server runs under, e.g. "chrt -o 0"
#   WORKLOAD_GODEBUG=asyncpreemptoff=1  GODEBUG for memcheck, the workload:
#                             no SIGURG preemption signals. A task that
#                             dispatches nbd requests (a reclaiming memcheck
#                             thread) and has a signal pending can be cut off
#                             mid-send (-ERESTARTSYS); 6.12.95's nbd_send_cmd
#                             then returns BLK_STS_RESOURCE with the header
#                             already sent, the server's reply later names a
#                             stale cookie or tag ("Double reply", "Unexpected
#                             reply"), the connection is declared dead and
#                             swap fails. Empty: Go's default
#   LRU_GEN=                  y or n: /sys/kernel/mm/lru_gen/enabled in the
#                             guest (Debian's 6.12 turns MGLRU on, its 6.1 off)
#   KERNEL=/boot/vmlinuz-...  guest kernel (default: Debian's 6.12 backports
#                             kernel from hack/guest-kernel.sh; Debian 12's 6.1
#                             in /boot works too)
#   GUEST_LOGLEVEL=5          guest console loglevel (7 shows hung-task stacks)
# Prints the guest console, then a summary table; exits non-zero on any
# failed check, a crash or a hang.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# Not under /tmp: the guest mounts a tmpfs there and would not see it.
B=${GUEST_BUILD:-$repo/hack/.build/guest}
SERVER=${SERVER:-auto}
GUEST_MEM_MIB=${GUEST_MEM_MIB:-512}
size_of() { # MiB -> a size string every tool here parses
	if (($1 % 1024 == 0)); then echo "$(($1 / 1024))G"; else echo "$1M"; fi
}
DEV_SIZE=${DEV_SIZE:-$(size_of $((2 * GUEST_MEM_MIB)))}
WORKLOAD=${WORKLOAD:-$(size_of $((3 * GUEST_MEM_MIB / 2)))}
# -b 4096: nbd-client's default is 512-byte blocks. -t: a request may take
# long under TCG and memory pressure; with more than one connection 6.1
# declares a connection dead after one timeout (default 30 s).
NBD_FLAGS=${NBD_FLAGS:--b 4096 -connections 2 -t 600 -swap}
# 32M: under TCG the NBD path does about 500 4k writes a second, so 256M
# would not finish; the verdict is what counts, not the IOPS.
FIO_SIZE=${FIO_SIZE:-32M}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-1200}
PHASES=${PHASES:-uzram ublk zram fio ublkfio cli ublkcli restart takeover ublktakeover}
UZRAM_FLAGS=${UZRAM_FLAGS:-}
SERVER_WRAP=${SERVER_WRAP:-}

die() {
	echo "guest-swap: $*" >&2
	exit 2
}

for tool in qemu-system-x86_64 nbd-client cpio gzip go; do
	command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install qemu-system-x86 nbd-client cpio)"
done
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
if [ -z "${KERNEL:-}" ]; then
	# Debian's 6.12 backports kernel (ublk_drv, nbd, zram as modules),
	# fetched and cached by guest-kernel.sh, its modules in /lib/modules.
	KERNEL=$("$here/guest-kernel.sh") || die "no guest kernel (hack/guest-kernel.sh failed; KERNEL=/boot/vmlinuz-... picks another)"
fi
[ -r "${KERNEL:-}" ] || die "cannot read the guest kernel $KERNEL"
kver=${KERNEL##*/vmlinuz-}
mods=/lib/modules/$kver
# The guest chroots into this root, so its modprobe needs the kernel's
# modules here, indexed (guest-kernel.sh does that; a Debian kernel package
# does it for its own).
[ -s "$mods/modules.dep" ] || die "$mods has no modules.dep (install the kernel's modules there and run depmod $kver)"
modprobe -S "$kver" -D nbd >/dev/null 2>&1 || die "$kver has no nbd module in $mods"
mkdir -p "$B"

# ---- build -------------------------------------------------------------------

# CGO_ENABLED=0: swapsafe needs syscall.AllThreadsSyscall, which cgo binaries
# refuse; and a static binary needs nothing from the guest.
export CGO_ENABLED=0
(cd "$repo" && go build -o "$B/memcheck" ./hack/memcheck)
(cd "$repo" && go test -c -o "$B/swapsafe.test" ./swapsafe)
(cd "$repo" && go test -c -o "$B/ublk.test" ./blockdev/ublk)
if [ "$SERVER" != nbdkit ]; then
	if [ -f "$repo/main.go" ] && (cd "$repo" && go build -o "$B/uzram" .) &&
		"$B/uzram" serve --help >/dev/null 2>&1; then
		SERVER=uzram
	elif [ "$SERVER" = uzram ]; then
		die "SERVER=uzram but \`uzram serve\` does not build"
	else
		echo "guest-swap: uzram serve not available yet; using nbdkit memory allocator=zstd"
		SERVER=nbdkit
	fi
fi
if [ "$SERVER" = nbdkit ]; then
	command -v nbdkit >/dev/null || die "nbdkit is not installed"
fi

# ---- initramfs -------------------------------------------------------------------

# busybox, guest-init.sh as /init, the virtio-pci and 9p modules: hack/guest-lib.sh.
# shellcheck source=guest-lib.sh source-path=SCRIPTDIR
. "$here/guest-lib.sh"
guest_initramfs "$kver" "$B"

cat >"$B/guest.env" <<EOF
B=$B
SERVER=$SERVER
GUEST_MEM_MIB=$GUEST_MEM_MIB
DEV_SIZE=$DEV_SIZE
WORKLOAD=$WORKLOAD
NBD_FLAGS="$NBD_FLAGS"
FIO_SIZE=$FIO_SIZE
PHASES="$PHASES"
UZRAM_FLAGS="$UZRAM_FLAGS"
SERVER_WRAP="$SERVER_WRAP"
MEMCHECK_TIMEOUT=${MEMCHECK_TIMEOUT:-600}
PAGE_CLUSTER=${PAGE_CLUSTER:-0}
TAKEOVER_WORKLOAD=${TAKEOVER_WORKLOAD:-256M}
UBLK_WORKLOAD=${UBLK_WORKLOAD:-$WORKLOAD}
TAKEOVER_MEMMAX=${TAKEOVER_MEMMAX:-96M}
LRU_GEN=${LRU_GEN:-}
WORKLOAD_GODEBUG=${WORKLOAD_GODEBUG-asyncpreemptoff=1}
EOF

# ---- boot ------------------------------------------------------------------------

echo "guest-swap: kernel $kver, ${GUEST_MEM_MIB} MiB RAM, 2 vCPUs (TCG), server $SERVER, device $DEV_SIZE, workload $WORKLOAD, nbd-client $NBD_FLAGS"
console=$B/console.log
start=$SECONDS
qrc=0
# The monitor on a pipe pair: 30 s before the timeout, a hung guest gets
# alt-sysrq-t and -l, which print every task and the busy CPUs' stacks.
rm -f "$B/mon.in" "$B/mon.out"
mkfifo "$B/mon.in" "$B/mon.out"
# Both helpers keep off our stdout: a caller reading it (the Go test) waits
# for every holder of the pipe to close it.
(
	sleep $((GUEST_TIMEOUT - 30))
	# t: every task's state; l: what the busy CPUs are running.
	printf 'sendkey alt-sysrq-t\nsendkey alt-sysrq-l\n' >"$B/mon.in"
) </dev/null >/dev/null 2>&1 &
sysrq=$!
cat "$B/mon.out" >/dev/null 2>&1 </dev/null &
drain=$!
# Keys without dots on the kernel command line reach /init's environment.
timeout --kill-after=10 "$GUEST_TIMEOUT" qemu-system-x86_64 \
	-accel tcg,thread=multi -cpu max -m "$GUEST_MEM_MIB" -smp 2 \
	-kernel "$KERNEL" -initrd "$B/initrd.gz" \
	-append "console=ttyS0 loglevel=${GUEST_LOGLEVEL:-5} panic=-1 GUEST_SCENARIO=$here/guest-scenario.sh GUEST_ENV=$B/guest.env GUEST_QUIT_AFTER=$((GUEST_TIMEOUT - 40))" \
	-display none -no-reboot -nic none -serial stdio \
	-chardev pipe,id=mon,path="$B/mon" -mon chardev=mon,mode=readline \
	-virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
	</dev/null 2>&1 | sed -u "s/\r$//" | tee "$console" || qrc=$?
elapsed=$((SECONDS - start))
# The sleeper's sleep first (killing the subshell leaves it), then the rest.
pkill -P "$sysrq" 2>/dev/null || true
kill "$sysrq" "$drain" 2>/dev/null || true

# ---- verdict ---------------------------------------------------------------------

status=0
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	echo "guest-swap: FAIL: the guest did not finish within ${GUEST_TIMEOUT}s"
	status=1
fi
guest_rc=$(sed -n 's/^@@ guest-exit rc=\([0-9]*\).*/\1/p' "$console" | tail -1)
if [ "${guest_rc:-none}" != 0 ]; then
	echo "guest-swap: FAIL: guest scenario exit status ${guest_rc:-missing}"
	status=1
fi
if [[ " $PHASES " == *" uzram "* ]] && ! grep -q '^@@ summary dev=uzram memcheck=PASS' "$console"; then
	echo "guest-swap: FAIL: no passing memcheck on the NBD server"
	status=1
fi
if [ "$SERVER" = uzram ] && [[ " $PHASES " == *" cli "* ]] && ! grep -q '^@@ cli result=PASS' "$console"; then
	echo "guest-swap: FAIL: the CLI phase (swapon, attach, setup) did not pass"
	status=1
fi
if [ "$SERVER" = uzram ] && [[ " $PHASES " == *" restart "* ]] && ! grep -q '^@@ restart .*verify_after_restart=PASS' "$console"; then
	echo "guest-swap: FAIL: data did not survive a daemon restart with its state file"
	status=1
fi
if [ "$SERVER" = uzram ] && [[ " $PHASES " == *" takeover "* ]] && ! grep -q '^@@ takeover memcheck=PASS' "$console"; then
	echo "guest-swap: FAIL: swap did not live through serve --takeover"
	status=1
fi
if [ "$SERVER" = uzram ] && [[ " $PHASES " == *" ublk "* ]] && ! grep -q '^@@ summary dev=ublk memcheck=PASS .*refused_writes=0 kernel_io_errors=0' "$console"; then
	echo "guest-swap: FAIL: swap on /dev/ublkb0 failed, or refused writes, or the kernel logged I/O errors"
	status=1
fi
if [ "$SERVER" = uzram ] && [[ " $PHASES " == *" ublkcli "* ]] && ! grep -q '^@@ ublkcli result=PASS' "$console"; then
	echo "guest-swap: FAIL: the ublk CLI phase (swapon --ublk, --find --ublk, setup, stop) did not pass"
	status=1
fi
if [ "$SERVER" = uzram ] && [[ " $PHASES " == *" ublktakeover "* ]] && ! grep -q '^@@ ublktakeover memcheck=PASS .*kernel_io_errors=0' "$console"; then
	echo "guest-swap: FAIL: swap on /dev/ublkb0 did not live through serve --takeover"
	status=1
fi
grep '^@@ fail ' "$console" || true

echo
echo "== summary (server: $SERVER; guest ${GUEST_MEM_MIB} MiB, workload $WORKLOAD, device $DEV_SIZE; VM ${elapsed}s)"
# A "@@ summary" and a "@@ fio" record per device, as key=value words.
awk '
	function kv(line, m,   n, i, w, p) {
		delete m; n = split(line, w, " ")
		for (i = 3; i <= n; i++) { p = index(w[i], "="); if (p) m[substr(w[i], 1, p - 1)] = substr(w[i], p + 1) }
	}
	/^@@ summary / { kv($0, s); d = s["dev"]; for (k in s) S[d, k] = s[k]; devs[++nd] = d }
	/^@@ fio / { kv($0, s); d = s["dev"]; for (k in s) S[d, k] = s[k] }
	END {
		fmt = "%-22s %-12s %-12s %-12s\n"
		printf fmt, "", "uzram/nbd", "uzram/ublk", "kernel zram"
		split("memcheck peak_swap_mib ratio stored_mib mem_used_mib trim_freed_pages after_free_mib after_swapoff_mib after_blkdiscard_mib refused_writes kernel_io_errors elapsed_s randwrite_verify randwrite_iops verify_read_iops randread_verify randread_iops mixed_verify", keys, " ")
		for (i = 1; i in keys; i++) {
			k = keys[i]
			a = ("uzram", k) in S ? S["uzram", k] : "-"
			u = ("ublk", k) in S ? S["ublk", k] : "-"
			b = ("zram", k) in S ? S["zram", k] : "-"
			printf fmt, k, a, u, b
		}
	}' "$console"
grep -E '^@@ (cli|ublkcli|restart|takeover|ublktakeover|ublktests|phase) ' "$console" | sed 's/^@@ //' || true
if [ "$status" = 0 ]; then
	echo "guest-swap: PASS"
else
	echo "guest-swap: FAIL"
fi
exit "$status"
