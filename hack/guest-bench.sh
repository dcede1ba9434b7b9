#!/usr/bin/env bash
# guest-bench.sh: the guest mode of the benchmarks (hack/bench.sh --guest).
# Boots ONE Debian 6.12 guest (qemu TCG, 2 vCPUs, the host's root read-only
# over 9p: hack/guest-lib.sh, hack/guest-init.sh) and runs fio 4k (libaio,
# direct, time-based) on several block devices in that same boot, median of
# REPS runs, the targets interleaved within each repetition so that host
# noise spreads evenly; prints a table with ratios to the first target, and
# keeps it in results/. Inside the guest: hack/guest-bench-scenario.sh.
#
# Targets (TARGETS, in table order; the ratio columns are the first target's
# IOPS over each other's):
#   uzram-ublk    uzram serve --size 2G --name uzram0 --ublk --ublk-id 0
#                 (every other flag at its default), /dev/ublkb0
#   uzram-nbd     uzram serve --size 2G --name uzram1 --socket ... --control ...,
#                 nbd-client -N uzram1 -b 4096 -connections 2 -t 600 /dev/nbd0
#                 (wbt off, 128 KiB requests)
#   zram          the guest kernel's zram, lz4, 2G
#   nbdkit-null   nbdkit null 2G, attached as uzram-nbd: the NBD transport alone
#   ublksrv-null  only with UBLKSRV=/path/to/ublk, a ublksrv binary you built
#                 (never built, fetched or kept here): `ublk add -t null -q 2
#                 -d 128`, the ublk transport alone
# The data targets (uzram-*, zram) get FILL (256 MiB) of fio's 50%-compressible
# buffers (bs=1M) before the jobs, as hack/bench.sh does, so reads hit
# stored pages; the jobs span that first FILL.
#
# Options (flags, or the environment variable in capitals):
#   --targets LIST   TARGETS: space- or comma-separated (default: uzram-ublk
#                    uzram-nbd zram nbdkit-null, plus ublksrv-null with UBLKSRV)
#   --jobs LIST      JOBS (default: randread-qd1 randread-qd32x2 randwrite-qd32x2;
#                    randwrite-qd1 too)
#   --reps N         REPS=3 (--runs N: the same, hack/bench's name)
#   --runtime S      RUNTIME=10 seconds per run (after 1 s of ramp)
#   --mem MIB        GUEST_MEM_MIB=2048
#   FILL=256M        data written first on uzram-* and zram, the span the jobs
#                    cover; small enough that three stores leave the guest's
#                    memory plentiful (with 1G each --realtime auto switched
#                    uzram to SCHED_RR, which is pressure, not the transport)
#   KERNEL=/path/vmlinuz-...   (default: hack/guest-kernel.sh's 6.12)
#   GUEST_TIMEOUT    seconds before qemu is killed (default: from the plan)
# Refuses to start while another qemu runs: two TCG guests on this machine's
# CPUs would skew each other's figures.
# Needs root, qemu-system-x86 busybox-static cpio xz-utils fio jq nbd-client
# nbdkit (apt), go.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
B=$repo/hack/.build/guest-bench # not under /tmp: the guest's /tmp is its own

die() {
	echo "guest-bench: $*" >&2
	exit 2
}
usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--targets) TARGETS=${2:?}; shift ;;
	--targets=*) TARGETS=${1#*=} ;;
	--jobs) JOBS=${2:?}; shift ;;
	--jobs=*) JOBS=${1#*=} ;;
	--reps | --runs) REPS=${2:?}; shift ;;
	--reps=* | --runs=*) REPS=${1#*=} ;;
	--runtime) RUNTIME=${2:?}; shift ;;
	--runtime=*) RUNTIME=${1#*=} ;;
	--mem) GUEST_MEM_MIB=${2:?}; shift ;;
	--mem=*) GUEST_MEM_MIB=${1#*=} ;;
	-h | --help) usage ;;
	*) die "unknown option $1 (--help lists them)" ;;
	esac
	shift
done

UBLKSRV=${UBLKSRV:-}
if [ -n "$UBLKSRV" ]; then
	UBLKSRV=$(readlink -f "$UBLKSRV")
	[ -x "$UBLKSRV" ] || die "UBLKSRV=$UBLKSRV is not an executable"
	case $UBLKSRV in /tmp/* | /run/*) die "UBLKSRV=$UBLKSRV: the guest sees the host's root but its own /tmp and /run" ;; esac
fi
TARGETS=${TARGETS:-uzram-ublk uzram-nbd zram nbdkit-null${UBLKSRV:+ ublksrv-null}}
TARGETS=${TARGETS//,/ }
JOBS=${JOBS:-randread-qd1 randread-qd32x2 randwrite-qd32x2}
JOBS=${JOBS//,/ }
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-10}
GUEST_MEM_MIB=${GUEST_MEM_MIB:-2048}
FILL=${FILL:-256M}
DEV_SIZE=2G
for t in $TARGETS; do
	case $t in
	uzram-ublk | uzram-nbd | zram | nbdkit-null) ;;
	ublksrv-null) [ -n "$UBLKSRV" ] || die "ublksrv-null needs UBLKSRV=/path/to/ublk (a ublksrv binary you built)" ;;
	*) die "unknown target $t (uzram-ublk uzram-nbd zram nbdkit-null ublksrv-null)" ;;
	esac
done
for j in $JOBS; do
	case $j in randread-qd1 | randwrite-qd1 | randread-qd32x2 | randwrite-qd32x2) ;; *) die "unknown job $j" ;; esac
done
[[ $REPS =~ ^[1-9][0-9]*$ && $RUNTIME =~ ^[1-9][0-9]*$ && $GUEST_MEM_MIB =~ ^[1-9][0-9]*$ ]] ||
	die "REPS, RUNTIME and GUEST_MEM_MIB are whole numbers"
nt=$(echo "$TARGETS" | wc -w)
nj=$(echo "$JOBS" | wc -w)
# Boot, module loads and fills take a few minutes under TCG; each fio run its
# runtime, a second of ramp and fio's own start.
GUEST_TIMEOUT=${GUEST_TIMEOUT:-$((900 + REPS * nt * nj * (RUNTIME + 15)))}

if pgrep -x qemu-system-x86 >/dev/null; then
	die "another qemu is running (pid $(pgrep -x qemu-system-x86 | tr '\n' ' ')): its vCPUs would share these CPUs and skew the figures; run this when it is done"
fi
[ "$(id -u)" = 0 ] || die "needs root (modules in /lib/modules, the guest's devices)"
for tool in qemu-system-x86_64 cpio gzip go fio jq nbd-client; do
	command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install qemu-system-x86 cpio fio jq nbd-client)"
done
[[ " $TARGETS " != *" nbdkit-null "* ]] || command -v nbdkit >/dev/null || die "nbdkit is not installed (apt-get install nbdkit)"
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
if [ -z "${KERNEL:-}" ]; then
	KERNEL=$("$here/guest-kernel.sh") || die "no guest kernel (hack/guest-kernel.sh failed; KERNEL=/boot/vmlinuz-... picks another)"
fi
[ -r "$KERNEL" ] || die "cannot read the guest kernel $KERNEL"
kver=${KERNEL##*/vmlinuz-}
[ -s "/lib/modules/$kver/modules.dep" ] || die "/lib/modules/$kver has no modules.dep (hack/guest-kernel.sh installs them)"
for m in nbd zram $([[ $TARGETS == *ublk* ]] && echo ublk_drv); do
	modprobe -S "$kver" -D "$m" >/dev/null 2>&1 || die "$kver has no $m module"
done

mkdir -p "$B" "$repo/results"
# CGO_ENABLED=0: a static binary needs nothing from the guest, and swapsafe
# refuses cgo binaries.
(cd "$repo" && CGO_ENABLED=0 go build -o "$B/uzram" .)
# shellcheck source=guest-lib.sh source-path=SCRIPTDIR
. "$here/guest-lib.sh"
guest_initramfs "$kver" "$B"
cat >"$B/guest.env" <<EOF
B=$B
TARGETS="$TARGETS"
JOBS="$JOBS"
REPS=$REPS
RUNTIME=$RUNTIME
FILL=$FILL
DEV_SIZE=$DEV_SIZE
UBLKSRV="$UBLKSRV"
EOF

stamp=$(date +%Y%m%d-%H%M%S)
out=$repo/results/guest-bench-$stamp
console=$out.console.log
commit=$(cd "$repo" && git describe --always --dirty 2>/dev/null || echo unknown)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date '+%Y-%m-%d %H:%M')
echo "guest-bench: kernel $kver, ${GUEST_MEM_MIB} MiB, 2 vCPUs TCG; targets: $TARGETS; $REPS x ($JOBS), ${RUNTIME} s each; host load $load_before"

# Host load and other qemu processes every 15 s while the guest runs.
samples=$B/host-samples
: >"$samples"
(
	while sleep 15; do
		echo "$(cut -d' ' -f1 /proc/loadavg) $(pgrep -c -x qemu-system-x86 || true)"
	done
) >>"$samples" 2>/dev/null </dev/null &
sampler=$!
stop_sampler() {
	pkill -P "$sampler" 2>/dev/null || true
	kill "$sampler" 2>/dev/null || true
}
trap stop_sampler EXIT

start=$SECONDS
qrc=0
# Keys without dots on the kernel command line reach /init's environment.
timeout --kill-after=10 "$GUEST_TIMEOUT" qemu-system-x86_64 \
	-accel tcg,thread=multi -cpu max -m "$GUEST_MEM_MIB" -smp 2 \
	-kernel "$KERNEL" -initrd "$B/initrd.gz" \
	-append "console=ttyS0 loglevel=4 panic=-1 GUEST_SCENARIO=$here/guest-bench-scenario.sh GUEST_ENV=$B/guest.env GUEST_QUIT_AFTER=$((GUEST_TIMEOUT - 40))" \
	-display none -no-reboot -nic none -serial stdio \
	-virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
	</dev/null 2>&1 | sed -u 's/\r$//' | tee "$console" | grep --line-buffered -E '^(@@|##|guest)' || qrc=$?
elapsed=$((SECONDS - start))
stop_sampler
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
read -r load_max others_max < <(awk '{ if ($1 > l) l = $1; if ($2 > q) q = $2 } END { printf "%s %d\n", l + 0, (q > 1 ? q - 1 : 0) }' "$samples")
echo "guest-bench: VM ${elapsed} s; host load after $load_after (1-min peak during the run $load_max); console in $console"

status=0
guest_rc=$(sed -n 's/^@@ guest-exit rc=\([0-9]*\).*/\1/p' "$console" | tail -1)
if [ "${guest_rc:-none}" != 0 ] || ! grep -q '^@@ done' "$console"; then
	echo "guest-bench: FAIL: the guest did not finish (exit ${guest_rc:-missing}, qemu pipeline status $qrc)" >&2
	status=1
fi

# ---- the table -----------------------------------------------------------------

{
	echo "## Guest benchmark, $started"
	echo
	echo "uzram $commit; guest: Debian $kver under qemu TCG, 2 vCPUs, ${GUEST_MEM_MIB} MiB; host: $(nproc) CPUs" \
		"($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), kernel $(uname -r)." \
		"fio $(fio --version | sed 's/^fio-//') 4k, libaio, direct, ${RUNTIME} s per run after 1 s of ramp, median of $REPS" \
		"runs, targets interleaved in each; $FILL of 50%-compressible data written first on uzram-* and zram ($DEV_SIZE devices)." \
		"Host load average before $load_before, after $load_after (1-min peak $load_max);" \
		"$([ "$others_max" = 0 ] && echo "no other qemu ran" || echo "ANOTHER QEMU RAN during the run (up to $others_max): the figures are suspect")."
	echo
	awk -v targets="$TARGETS" -v jobs="$JOBS" -v reps="$REPS" '
		function median(s,   a, n, i, j, t) {
			n = split(s, a, " ")
			for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
			return n ? (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : ""
		}
		function human(x) { return x >= 1e6 ? sprintf("%.2fM", x / 1e6) : x >= 1e4 ? sprintf("%.1fk", x / 1e3) : sprintf("%.0f", x) }
		function us(x) { if (x == "") return "-"; x += 0; return x < 10 ? sprintf("%.1f", x) : sprintf("%.0f", x) }
		function jobname(j) {
			if (j == "randread-qd1") return "4k randread QD1 x1"
			if (j == "randwrite-qd1") return "4k randwrite QD1 x1"
			if (j == "randread-qd32x2") return "4k randread QD32 x2"
			if (j == "randwrite-qd32x2") return "4k randwrite QD32 x2"
			return j
		}
		/^@@ r / {
			delete m; for (i = 3; i <= NF; i++) { p = index($i, "="); m[substr($i, 1, p - 1)] = substr($i, p + 1) }
			k = m["target"] SUBSEP m["job"]
			I[k] = I[k] " " m["iops"]; P[k] = P[k] " " m["p50_us"]; P90[k] = P90[k] " " m["p90_us"]
			P99[k] = P99[k] " " m["p99_us"]; M[k] = M[k] " " m["mean_us"]; N[k]++
			E[k] = E[k] " " us(m["p50_us"]) "/" us(m["mean_us"])
		}
		END {
			nt = split(targets, T, " "); nj = split(jobs, J, " ")
			print "IOPS (median p50 completion latency, µs):"
			print ""
			printf "| job |"; for (t = 1; t <= nt; t++) printf " %s |", T[t]
			for (t = 2; t <= nt; t++) printf " %s ÷ %s |", T[1], T[t]
			printf "\n|---|"; for (t = 1; t < 2 * nt; t++) printf "---:|"; printf "\n"
			for (j = 1; j <= nj; j++) {
				printf "| %s |", jobname(J[j])
				for (t = 1; t <= nt; t++) {
					k = T[t] SUBSEP J[j]; v[t] = median(I[k])
					if (v[t] == "") { printf " failed |"; continue }
					printf " %s (%s)%s |", human(v[t]), us(median(P[k])), (N[k] < reps ? sprintf(" n=%d", N[k]) : "")
				}
				for (t = 2; t <= nt; t++) printf " %s |", ((v[t] > 0 && v[1] != "") ? sprintf("%.2f", v[1] / v[t]) : "-")
				printf "\n"
			}
			for (j = 1; j <= nj; j++) {
				if (J[j] !~ /qd1$/) continue
				print ""
				printf "%s completion latency, µs (medians over the runs; mean far above p50 means two modes):\n\n", jobname(J[j])
				print "| target | p50 | mean | p90 | p99 | mean ÷ p50 | each run: p50/mean |"
				print "|---|---:|---:|---:|---:|---:|---|"
				for (t = 1; t <= nt; t++) {
					k = T[t] SUBSEP J[j]
					if (!N[k]) { printf "| %s | failed | | | | | |\n", T[t]; continue }
					p = median(P[k]); mu = median(M[k])
					printf "| %s | %s | %s | %s | %s | %s | %s |\n", T[t], us(p), us(mu), us(median(P90[k])), us(median(P99[k])),
						((p > 0 && mu != "") ? sprintf("%.1f", mu / p) : "-"), substr(E[k], 2)
				}
			}
		}' "$console"
	if grep -qE '^@@ fail' "$console"; then
		echo
		echo "Failures:"
		grep -E '^@@ fail' "$console" | sed 's/^@@ fail /- /'
	fi
} | tee "$out.md"
echo "guest-bench: table in $out.md"
exit "$status"
