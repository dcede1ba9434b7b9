#!/bin/busybox sh
# shellcheck shell=dash
# /init of the guest's initramfs (guest_initramfs in hack/guest-lib.sh packs
# it with busybox-static and the virtio + 9p modules, for hack/guest-swap.sh
# and hack/guest-bench.sh). It mounts the host's root
# read-only over 9p, chroots there and runs the scenario named on the kernel
# command line (GUEST_SCENARIO=, passed to init's environment), so the guest
# uses the host's nbd-client, mkswap, fio and freshly built binaries.
# Whatever happens it ends with poweroff, so a failed step never leaves
# qemu waiting for a timeout.
set -eu
set -o pipefail

/bin/busybox --install -s /bin
export PATH=/bin

finish() {
	echo "@@ guest-exit rc=$1"
	sync
	poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The modules that bring up virtio-pci and 9p, in dependency order, as
# guest_initramfs found them for this kernel (built-in ones are left out).
while read -r m; do
	insmod "/modules/$m.ko" || { echo "guest-init: insmod $m failed"; finish 90; }
done </modules/order

mkdir -p /mnt
# The default msize (8 KiB) on purpose: every 9p request allocates two
# msize buffers, and under swap pressure a large msize turns each reload of
# an evicted binary page into a high-order allocation that stalls the guest.
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro host /mnt; then
	echo "guest-init: cannot mount the host root over 9p"
	finish 91
fi
mount -t proc proc /mnt/proc
mount -t sysfs sysfs /mnt/sys
mount -t devtmpfs devtmpfs /mnt/dev
# The host's /tmp and /run are hidden by fresh writable tmpfs: the only
# writable places in the guest.
mount -t tmpfs tmpfs /mnt/tmp
mount -t tmpfs tmpfs /mnt/run

# If the scenario hangs (a swap deadlock stops every process that needs
# memory or 9p), this loop, run from the initramfs whose pages cannot be
# evicted, makes any uzram dump its goroutines (Go's SIGQUIT) to the
# console before the host's timeout kills the VM.
if [ "${GUEST_QUIT_AFTER:-0}" -gt 0 ]; then
	(
		sleep "$GUEST_QUIT_AFTER"
		echo "guest-init: still running after ${GUEST_QUIT_AFTER}s; SIGQUIT to uzram for its stacks"
		echo w >/proc/sysrq-trigger
		for p in $(pidof uzram); do kill -QUIT "$p"; done
	) &
fi

rc=0
chroot /mnt /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
	GUEST_ENV="${GUEST_ENV:-}" /bin/bash "${GUEST_SCENARIO:?}" || rc=$?
finish "$rc"
