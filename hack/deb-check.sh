#!/usr/bin/env bash
# deb-check.sh DEB: install a uzram .deb (hack/deb.sh) on a Debian system
# and use it, as an admin would: dpkg -i, then under systemd `systemctl
# start uzram uzram-swap`, swap from /etc/uzram.conf listed by uzram,
# `uzram swapon --size 256M`, a reload, man uzram, completion, systemctl
# stop, removal and purge. The host's kernel has no nbd module, so this
# boots Debian's kernel under qemu (as hack/guest-swap.sh does) on an
# overlay of the host's root: a fresh writable layer over the read-only 9p
# root, which takes the package's files and dpkg's database, the host seeing
# none of it (hack/deb-check-init.sh); systemd then boots from that root
# into the check alone (hack/deb-check-guest.sh).
#
# Environment (all optional):
#   GUEST_MEM_MIB=512, GUEST_TIMEOUT=300, KERNEL=/boot/vmlinuz-...
# Prints the guest console; the last line is "deb-check: PASS" or FAIL.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deb=$(realpath "${1:?usage: deb-check.sh uzram_VERSION_ARCH.deb}")
GUEST_MEM_MIB=${GUEST_MEM_MIB:-512}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-300}

die() {
	echo "deb-check: $*" >&2
	exit 2
}
case $deb in /tmp/* | /run/*) die "$deb is under /tmp or /run, which the guest covers with its own tmpfs" ;; esac
for tool in qemu-system-x86_64 cpio gzip; do
	command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install qemu-system-x86 cpio)"
done
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
if [ -z "${KERNEL:-}" ]; then
	KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' | sort -V | tail -1)
fi
[ -r "${KERNEL:-}" ] || die "no Debian kernel in /boot (apt-get install linux-image-amd64)"
kver=${KERNEL#*/vmlinuz-}
mods=/lib/modules/$kver
[ -f "$mods/kernel/drivers/block/nbd.ko" ] || die "$mods has no nbd.ko"

# Beside the .deb: not under /tmp, so the guest sees it.
B=$(mktemp -d "$(dirname "$deb")/deb-check.XXXXXX")
trap 'rm -rf "$B"' EXIT
ird=$B/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,mnt,modules}
cp /bin/busybox "$ird/bin/busybox"
cp "$here/deb-check-init.sh" "$ird/init"
chmod 755 "$ird/init"
for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev virtio/virtio_pci; do
	cp "$mods/kernel/drivers/$m.ko" "$ird/modules/"
done
cp "$mods/kernel/fs/netfs/netfs.ko" "$mods/kernel/fs/fscache/fscache.ko" "$mods/kernel/fs/9p/9p.ko" \
	"$mods/kernel/net/9p/9pnet.ko" "$mods/kernel/net/9p/9pnet_virtio.ko" "$mods/kernel/fs/overlayfs/overlay.ko" "$ird/modules/"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$B/initrd.gz"
printf 'DEB=%q\n' "$deb" >"$B/guest.env"

console=$B/console.log
qrc=0
timeout --kill-after=10 "$GUEST_TIMEOUT" qemu-system-x86_64 \
	-accel tcg,thread=multi -cpu max -m "$GUEST_MEM_MIB" -smp 2 \
	-kernel "$KERNEL" -initrd "$B/initrd.gz" \
	-append "console=ttyS0 loglevel=4 panic=-1 GUEST_SCENARIO=$here/deb-check-guest.sh GUEST_ENV=$B/guest.env" \
	-display none -no-reboot -nic none -serial stdio \
	-virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
	</dev/null 2>&1 | sed -u "s/\r$//" | tee "$console" || qrc=$?

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	echo "deb-check: FAIL: the guest did not finish within ${GUEST_TIMEOUT}s"
	exit 1
fi
if grep -q '^@@ deb install=PASS' "$console" && grep -q '^@@ deb result=PASS' "$console" && grep -q '^@@ guest-exit rc=0' "$console"; then
	echo "deb-check: PASS"
	exit 0
fi
grep '^@@ fail ' "$console" || true
echo "deb-check: FAIL"
exit 1
