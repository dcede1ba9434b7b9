# shellcheck shell=bash
# guest-lib.sh: what the host side of the qemu guest scripts shares
# (hack/guest-swap.sh, hack/guest-bench.sh). Sourced, not run. The caller
# defines die MESSAGE (print it, exit) before calling these.

# guest_initramfs KV DIR: packs DIR/initrd.gz, the guest's initramfs for
# kernel KV: busybox, hack/guest-init.sh as /init, and the virtio-pci and 9p
# modules with their dependencies in load order, as the kernel at hand has
# them: 6.1 builds them all as modules (.ko), 6.12 has virtio, virtio_pci and
# fscache built in and compresses its modules (.ko.xz), which busybox's
# insmod cannot read, so they go in decompressed. /modules/order tells the
# init what to load. DIR/initramfs is the tree, DIR/modules.dep.txt what
# modprobe resolved.
guest_initramfs() {
	local kver=$1 dir=$2 ird kind path name
	ird=$dir/initramfs
	rm -rf "$ird"
	mkdir -p "$ird"/{bin,dev,proc,sys,mnt,modules}
	cp /bin/busybox "$ird/bin/busybox"
	cp "$(dirname "${BASH_SOURCE[0]}")/guest-init.sh" "$ird/init"
	chmod 755 "$ird/init"
	modprobe -a -S "$kver" -D virtio_pci 9pnet_virtio 9p >"$dir/modules.dep.txt" 2>&1 ||
		die "$kver: cannot resolve the virtio-pci and 9p modules: $(tail -1 "$dir/modules.dep.txt")"
	: >"$ird/modules/order"
	while read -r kind path _; do
		[ "$kind" = insmod ] || continue
		name=$(basename "$path")
		name=${name%%.ko*}
		[ -f "$ird/modules/$name.ko" ] && continue
		case $path in
		*.ko) cp "$path" "$ird/modules/$name.ko" ;;
		*.ko.xz)
			command -v xz >/dev/null || die "$kver's modules are xz-compressed: apt-get install xz-utils"
			xz -dc "$path" >"$ird/modules/$name.ko"
			;;
		*.ko.zst)
			command -v zstd >/dev/null || die "$kver's modules are zstd-compressed: apt-get install zstd"
			zstd -qdc "$path" >"$ird/modules/$name.ko"
			;;
		*) die "$path: unknown module format" ;;
		esac
		echo "$name" >>"$ird/modules/order"
	done <"$dir/modules.dep.txt"
	(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir/initrd.gz"
}
