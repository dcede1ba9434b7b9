#!/bin/busybox sh
# shellcheck shell=dash
# /init of the initramfs that hack/deb-check.sh boots. It lays a writable
# Debian over the host's root (the host's root read-only over 9p below, a
# tmpfs above, joined by overlayfs), has hack/deb-check-guest.sh install the
# package there (dpkg -i, chrooted), then hands the machine to systemd on
# that root: systemd becomes PID 1 and starts only deb-check.target, whose
# service runs the rest of the check and powers off.
set -eu

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
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay; do
	insmod "/modules/$m.ko" || { echo "deb-check-init: insmod $m failed"; finish 90; }
done
mkdir -p /lower /layer /newroot
# The default msize, as hack/guest-init.sh explains.
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /lower || { echo "deb-check-init: no 9p root"; finish 91; }
mount -t tmpfs -o mode=0755 tmpfs /layer
mkdir -p /layer/upper /layer/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/layer/upper,workdir=/layer/work /newroot ||
	{ echo "deb-check-init: overlayfs failed"; finish 92; }
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount -t tmpfs tmpfs /newroot/tmp

rc=0
chroot /newroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
	GUEST_ENV="${GUEST_ENV:-}" /bin/bash "${GUEST_SCENARIO:?}" install || rc=$?
[ "$rc" = 0 ] || finish "$rc"

# systemd mounts /proc, /sys, /dev and /run itself.
umount /newroot/tmp /newroot/run /newroot/proc /newroot/sys
exec switch_root /newroot /lib/systemd/systemd --unit=deb-check.target
