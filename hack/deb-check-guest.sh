#!/usr/bin/env bash
# Runs inside the guest that hack/deb-check.sh boots, chrooted into the
# host's read-only root over 9p. It lays a writable overlay over that root
# (the host's files below, a tmpfs on top), installs the .deb there with
# dpkg, and uses the installed files as an admin would on a machine without
# systemd: the units' ExecStart lines run by hand. Records for the host:
# "@@ deb ..." facts, "@@ fail what=..." failed checks, "## ..." narration.
set -euo pipefail
# shellcheck source=/dev/null
. "${GUEST_ENV:?}"
: "${DEB:?}"

say() { echo "@@ $*"; }
log() { echo "## $*"; }

# ---- a writable Debian: overlay over the host's root ------------------------

modprobe overlay
R=/tmp/root
mkdir -p /tmp/ovl/upper /tmp/ovl/work "$R"
mount -t overlay overlay -o lowerdir=/,upperdir=/tmp/ovl/upper,workdir=/tmp/ovl/work "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
log "installing $(basename "$DEB") into an overlay of the host's root"

# The rest runs inside that root, as root on a Debian machine without
# systemd as PID 1.
chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb DEB="$DEB" /bin/bash -s <<'INSIDE'
set -uo pipefail
say() { echo "@@ $*"; }
log() { echo "## $*"; }
failed=0
fail() { say "fail what=\"$*\""; failed=$((failed + 1)); }
check() { # check DESCRIPTION COMMAND...: run it, a failed check on non-zero
	local what=$1
	shift
	if ! out=$("$@" 2>&1); then
		fail "$what: $(echo "$out" | tail -3 | tr '\n' ' ')"
		return 1
	fi
}

if dpkg -s uzram >/dev/null 2>&1; then
	fail "uzram is already installed on the host: this checks a fresh install"
fi
# man-db's trigger would index every page over 9p under TCG: minutes.
echo "man-db man-db/auto-update boolean false" | debconf-set-selections
start=$SECONDS
check "dpkg -i" dpkg -i "$DEB" || { echo "$out"; exit 1; }
say "deb installed=$(dpkg-query -W -f='${Version}' uzram) seconds=$((SECONDS - start))"

# The maintainer scripts enabled the units but started nothing.
for link in /etc/systemd/system/multi-user.target.wants/uzram.service /etc/systemd/system/swap.target.wants/uzram-swap.service; do
	[ -L "$link" ] || fail "postinst did not enable: no $link"
done
pidof uzram >/dev/null && fail "the daemon runs right after install"
[ -z "$(swapon --noheadings --show)" ] || fail "swap is on right after install"

# `systemctl start uzram uzram-swap`, without systemd: the units' commands.
unit_cmd() { # unit key: its Exec line's command, without a leading '-'
	sed -n "s/^$2=-\{0,1\}//p" "/lib/systemd/system/$1"
}
log "uzram.service by hand: $(unit_cmd uzram.service ExecStartPre); $(unit_cmd uzram.service ExecStart)"
eval "$(unit_cmd uzram.service ExecStartPre)" || log "ExecStartPre failed (allowed: '-')"
# shellcheck disable=SC2046 # the unit's command line, word-split as systemd would
$(unit_cmd uzram.service ExecStart) >/run/uzram-daemon.log 2>&1 &
daemon=$!
for _ in $(seq 100); do uzram >/dev/null 2>&1 && break; sleep 0.2; done
check "the daemon answers" uzram || { cat /run/uzram-daemon.log; exit 1; }
log "uzram-swap.service by hand: $(unit_cmd uzram-swap.service ExecStart)"
check "uzram-swap's ExecStart" $(unit_cmd uzram-swap.service ExecStart) && echo "$out"
uzram
swapon --show
uzram --noheadings --raw --output NAME,MOUNTPOINT | grep -qx 'uzram0 \[SWAP\]' || fail "uzram does not list uzram0 as swap"
swapon --noheadings --show=NAME | grep -q '^/dev/nbd' || fail "swapon --show has no /dev/nbd"

check "uzram swapon --size 256M" uzram swapon --size 256M && say "deb swapon=\"$out\""
swapon --noheadings --show=NAME,SIZE
uzram --noheadings --raw --output NAME,MOUNTPOINT | grep -qx 'uzram1 \[SWAP\]' || fail "uzram swapon made no swap uzram1"
check "uzram swapoff uzram1" uzram swapoff uzram1

# man uzram, completion, --version from the installed files.
if check "man -w uzram" man -w uzram && [ "$out" != /usr/share/man/man8/uzram.8.gz ]; then
	fail "man -w uzram finds $out"
fi
MANPAGER=cat MANWIDTH=80 man uzram 2>/dev/null | grep -q '^SYNOPSIS' || fail "man uzram shows no SYNOPSIS"
comp=$(bash -c 'source /usr/share/bash-completion/completions/uzram; COMP_WORDS=(uzram swapoff ""); COMP_CWORD=2; _uzram; echo "${COMPREPLY[*]}"')
[ "$comp" = uzram0 ] || fail "uzram swapoff <TAB> completes to '$comp', want uzram0"
say "deb version=\"$(uzram --version | head -1)\" completion=\"$comp\""

# systemctl stop uzram-swap uzram, by hand.
check "uzram-swap's ExecStop" sh -c "$(sed -n 's/^ExecStop=//p' /lib/systemd/system/uzram-swap.service | sed "s/^\/bin\/sh -c '\(.*\)'$/\1/")"
[ -z "$(swapon --noheadings --show)" ] || fail "swap still on after uzram-swap's ExecStop"
kill -TERM "$daemon"
wait "$daemon" || fail "the daemon exited with $? on SIGTERM"

check "dpkg -r" dpkg -r uzram
[ -e /usr/sbin/uzram ] && fail "dpkg -r left /usr/sbin/uzram"
[ -e /etc/uzram.conf ] || fail "dpkg -r removed the conffile /etc/uzram.conf"
check "dpkg -P" dpkg -P uzram
[ -e /etc/uzram.conf ] && fail "dpkg -P left /etc/uzram.conf"
[ -L /etc/systemd/system/multi-user.target.wants/uzram.service ] && fail "purge left the unit enabled"

if [ "$failed" = 0 ]; then
	say "deb result=PASS"
else
	say "deb result=FAIL failed=$failed"
fi
INSIDE
