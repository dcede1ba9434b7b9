#!/usr/bin/env bash
# guest-kernel.sh: make sure Debian's 6.12 backports kernel is here for the
# qemu guest (hack/guest-swap.sh, tests/vm_test.go) and print its vmlinuz
# path on stdout; every message goes to stderr. That kernel has ublk_drv,
# nbd and zram as modules; Debian 12's own 6.1 has no ublk.
#
# The first run fetches the newest linux-image-6.12.*+deb12-amd64 from
# bookworm-backports through a private apt sources list (the machine's apt
# configuration is left alone, nothing is installed with dpkg, /boot is not
# touched), keeps vmlinuz and the .deb in the cache, and copies the modules
# into /lib/modules/KV and runs depmod there: the guest chroots into this
# machine's root, so that is where its modprobe looks. Later runs find it all
# in the cache and return at once, with no network access.
#
# Environment (all optional):
#   GUEST_KERNEL_CACHE=/var/cache/uzram/guest-kernel   where it is kept
#   GUEST_KERNEL_VERSION   pin a version, e.g. 6.12.95+deb12 (default: the
#                          newest 6.12 in the index, looked up on the first
#                          run and then kept)
#   GUEST_KERNEL_REFRESH=1 look in the index again for a newer one
#   GUEST_KERNEL_SUITE=bookworm-backports
#   GUEST_KERNEL_MIRROR    Debian mirror URI (default: the one this machine's
#                          apt sources use for Debian)
# Options:
#   --cached   only report what is already here: print the path if the kernel
#              and its modules are installed, else exit 1 with the reason; no
#              network, nothing written (what tests/vm_test.go uses)
# Needs root (it writes /lib/modules) for anything but --cached, apt, dpkg-deb,
# kmod's depmod and flock; the guest's initramfs needs xz-utils besides.
set -euo pipefail

CACHE=${GUEST_KERNEL_CACHE:-/var/cache/uzram/guest-kernel}
SUITE=${GUEST_KERNEL_SUITE:-bookworm-backports}
SERIES=6.12
FLAVOUR=amd64
cached_only=0
case ${1:-} in
--cached) cached_only=1 ;;
"") ;;
*)
	echo "usage: $0 [--cached]" >&2
	exit 2
	;;
esac

die() {
	echo "guest-kernel: $*" >&2
	exit 1
}
say() { echo "guest-kernel: $*" >&2; }

# kv_of VERSION: 6.12.95+deb12 or 6.12.95+deb12-amd64 -> 6.12.95+deb12-amd64
kv_of() { echo "${1%-"$FLAVOUR"}-$FLAVOUR"; }

# ready KV: vmlinuz cached and the modules installed with their index.
ready() {
	local kv=$1 dep=/lib/modules/$1/modules.dep
	[ -r "$CACHE/$kv/vmlinuz-$kv" ] && [ -s "$dep" ] &&
		grep -q '/nbd\.ko[^:]*:' "$dep" && grep -q '/zram\.ko[^:]*:' "$dep"
}

# The version wanted without asking the index: the pinned one, else the one
# an earlier run picked.
wanted=
if [ -n "${GUEST_KERNEL_VERSION:-}" ]; then
	wanted=$(kv_of "$GUEST_KERNEL_VERSION")
elif [ "${GUEST_KERNEL_REFRESH:-0}" != 1 ] && [ -s "$CACHE/current" ]; then
	wanted=$(cat "$CACHE/current")
fi
if [ -n "$wanted" ] && ready "$wanted"; then
	echo "$CACHE/$wanted/vmlinuz-$wanted"
	exit 0
fi
if [ "$cached_only" = 1 ]; then
	if [ -z "$wanted" ]; then
		die "no guest kernel in $CACHE yet (run hack/guest-kernel.sh as root once)"
	elif [ ! -r "$CACHE/$wanted/vmlinuz-$wanted" ]; then
		die "$wanted is not in $CACHE (run hack/guest-kernel.sh as root once)"
	else
		die "$wanted's modules are not installed in /lib/modules/$wanted (run hack/guest-kernel.sh as root)"
	fi
fi

# ---- the slow path: look up, download, install ------------------------------

[ "$(id -u)" = 0 ] || die "must run as root the first time (it writes $CACHE and /lib/modules)"
for tool in apt-get apt-cache dpkg-deb depmod flock; do
	command -v "$tool" >/dev/null || die "$tool is missing (a Debian machine with apt, dpkg and kmod is needed)"
done
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 900 9 || die "another guest-kernel.sh holds $CACHE/.lock"
# Another run may have done the work while we waited.
if [ -n "$wanted" ] && ready "$wanted"; then
	echo "$CACHE/$wanted/vmlinuz-$wanted"
	exit 0
fi

A=$CACHE/apt
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs"
apt_opts=(-o "Dir::Etc::sourcelist=$A/sources.list" -o Dir::Etc::sourceparts=-
	-o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache"
	-o APT::Sandbox::User=root)

# The index, fetched when we have to look a version up or download one and
# have none yet (or it is a day old: the .deb it names may be gone).
index_fresh() {
	[ -n "$(find "$A/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null)" ]
}
update_index() {
	local mirror=${GUEST_KERNEL_MIRROR:-} codename keyring opts=
	if [ -z "$mirror" ]; then
		# shellcheck source=/dev/null
		codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
		# The URI this machine's apt uses for its release's main suite, from a
		# deb822 stanza or a one-line entry.
		local f files=()
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
			[ -r "$f" ] && files+=("$f")
		done
		mirror=$(awk -v suite="${codename:-${SUITE%%-*}}" '
			function check() {
				if (uris != "" && index(" " suites " ", " " suite " ")) { print uris; found = 1; exit }
				uris = ""; suites = ""
			}
			FNR == 1 && NR > 1 { check() }
			/^[[:space:]]*$/ { check(); next }
			/^URIs:/ { uris = $2 }
			/^Suites:/ { $1 = ""; suites = $0 }
			/^deb[[:space:]]/ { sub(/\[[^]]*\]/, ""); if ($3 == suite) { print $2; found = 1; exit } }
			END { if (!found) check() }
		' "${files[@]}" /dev/null | head -1)
		[ -n "$mirror" ] || die "no Debian ${codename:-${SUITE%%-*}} source in /etc/apt to take a mirror from; set GUEST_KERNEL_MIRROR"
	fi
	keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	[ -r "$keyring" ] && opts="[signed-by=$keyring] "
	echo "deb ${opts}$mirror $SUITE main" >"$A/sources.list"
	say "fetching the $SUITE index from $mirror"
	apt-get "${apt_opts[@]}" -q --error-on=any update >"$A/update.log" 2>&1 ||
		die "apt-get update of $SUITE from $mirror failed: $(grep -E '^(E|W):' "$A/update.log" | head -1 || tail -1 "$A/update.log")"
}

if [ -z "$wanted" ]; then
	update_index
	wanted=$(apt-cache "${apt_opts[@]}" pkgnames "linux-image-$SERIES." 2>/dev/null |
		grep -E "^linux-image-${SERIES//./\\.}\.[0-9]+\+deb[0-9]+-$FLAVOUR\$" | sort -V | tail -1 || true)
	[ -n "$wanted" ] || die "no linux-image-$SERIES.*-$FLAVOUR in $SUITE's index"
	wanted=${wanted#linux-image-}
	say "newest $SERIES kernel in $SUITE: $wanted"
	if ready "$wanted"; then
		echo "$wanted" >"$CACHE/current"
		echo "$CACHE/$wanted/vmlinuz-$wanted"
		exit 0
	fi
fi
kv=$wanted
dir=$CACHE/$kv
pkg=linux-image-$kv
mkdir -p "$dir"

deb=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -1)
if [ -z "$deb" ] || ! dpkg-deb -f "$deb" Package >/dev/null 2>&1; then
	index_fresh || update_index
	say "downloading $pkg (about 110 MB)"
	rm -f "$A/debs"/*.deb
	(cd "$A/debs" && apt-get "${apt_opts[@]}" -q download "$pkg") >"$A/download.log" 2>&1 ||
		die "apt-get download $pkg failed: $(grep -E '^(E|W):' "$A/download.log" | head -1 || tail -1 "$A/download.log")"
	deb=$(find "$A/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -1)
	[ -n "$deb" ] || die "apt-get download $pkg left no .deb in $A/debs"
	dpkg-deb -f "$deb" Package >/dev/null 2>&1 || die "$deb is not a valid package"
	rm -f "$dir"/*.deb
	mv "$deb" "$dir/"
	deb=$dir/$(basename "$deb")
fi

# Unpack once into a scratch folder: vmlinuz to the cache, the modules to
# /lib/modules/KV (whole, replacing a partial copy), then depmod.
tmp=$CACHE/.unpack
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
say "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$tmp" || die "dpkg-deb -x $deb failed"
[ -r "$tmp/boot/vmlinuz-$kv" ] || die "$deb has no boot/vmlinuz-$kv"
src=
for d in "$tmp/lib/modules/$kv" "$tmp/usr/lib/modules/$kv"; do
	[ -d "$d" ] && src=$d
done
[ -n "$src" ] || die "$deb has no lib/modules/$kv"
mkdir -p /lib/modules
rm -rf "/lib/modules/$kv.partial" "/lib/modules/$kv"
cp -a "$src" "/lib/modules/$kv.partial"
mv "/lib/modules/$kv.partial" "/lib/modules/$kv"
depmod "$kv" || die "depmod $kv failed"
grep -q '/ublk_drv\.ko[^:]*:' "/lib/modules/$kv/modules.dep" || say "warning: $kv has no ublk_drv module"
cp "$tmp/boot/vmlinuz-$kv" "$dir/vmlinuz-$kv.new"
mv "$dir/vmlinuz-$kv.new" "$dir/vmlinuz-$kv"
ready "$kv" || die "$kv installed but nbd or zram is missing from /lib/modules/$kv/modules.dep"
# Remember the pick, so later runs need no index.
[ -n "${GUEST_KERNEL_VERSION:-}" ] || echo "$kv" >"$CACHE/current"
say "installed $kv: modules in /lib/modules/$kv"
echo "$dir/vmlinuz-$kv"
