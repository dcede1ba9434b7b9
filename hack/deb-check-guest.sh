#!/usr/bin/env bash
# The guest's side of hack/deb-check.sh, in two phases on the writable
# Debian that hack/deb-check-init.sh lays over the host's root:
#   install  chrooted, before systemd runs: dpkg -i the package; the units
#            must be enabled and nothing started; then deb-check.target and
#            its service are written for systemd to start
#   systemd  as that service, with systemd as PID 1: systemctl start uzram
#            uzram-swap and what an admin checks next (uzram, swapon --show,
#            systemctl status), uzram swapon --size 256M, a reload (the
#            daemon re-executes in place, swap kept), man uzram, completion,
#            systemctl stop, dpkg -r and -P; then it powers the guest off
# Records for the host: "@@ deb ..." facts, "@@ fail what=..." failed
# checks, "## ..." narration.
set -uo pipefail
# shellcheck source=/dev/null
. "${GUEST_ENV:?}"
: "${DEB:?}"

say() { echo "@@ $*"; }
log() { echo "## $*"; }
failed=0
fail() {
	say "fail what=\"$*\""
	failed=$((failed + 1))
}
out=
check() { # check DESCRIPTION COMMAND...: runs it; a failed check if it fails
	local what=$1
	shift
	if ! out=$("$@" 2>&1); then
		fail "$what: $(echo "$out" | tail -3 | tr '\n' ' ')"
		return 1
	fi
}
verdict() {
	if [ "$failed" = 0 ]; then
		say "deb $1=PASS"
	else
		say "deb $1=FAIL failed=$failed"
	fi
}

install_phase() {
	dpkg -s uzram >/dev/null 2>&1 && fail "uzram is already installed on the host: this checks a fresh install"
	# man-db's trigger would index every page over 9p under TCG: minutes.
	echo "man-db man-db/auto-update boolean false" | debconf-set-selections
	local start=$SECONDS
	check "dpkg -i" dpkg -i "$DEB" || { echo "$out"; return 1; }
	say "deb installed=$(dpkg-query -W -f='${Version}' uzram) seconds=$((SECONDS - start))"
	# The maintainer scripts enabled the units but started nothing.
	local link
	for link in /etc/systemd/system/multi-user.target.wants/uzram.service /etc/systemd/system/swap.target.wants/uzram-swap.service; do
		[ -L "$link" ] || fail "postinst did not enable: no $link"
	done
	pidof uzram >/dev/null && fail "the daemon runs right after install"
	[ -z "$(swapon --noheadings --show)" ] || fail "swap is on right after install"

	cat >/etc/systemd/system/deb-check.target <<-UNIT
		[Unit]
		Description=check the uzram package
		Requires=deb-check.service
		AllowIsolate=yes
	UNIT
	cat >/etc/systemd/system/deb-check.service <<-UNIT
		[Unit]
		Description=check the uzram package
		DefaultDependencies=no
		[Service]
		Type=oneshot
		Environment=GUEST_ENV=$GUEST_ENV
		ExecStart=/bin/bash $0 systemd
		StandardOutput=tty
		StandardError=tty
		TTYPath=/dev/console
	UNIT
	verdict install
	[ "$failed" = 0 ]
}

systemd_phase() {
	log "systemd $(systemctl --version | head -1 | cut -d' ' -f2) is PID 1"
	check "systemctl start uzram uzram-swap" systemctl start uzram uzram-swap
	# Type=notify: start returns once the daemon said READY=1, when its
	# control socket answers already, and uzram-swap ran after that.
	uzram
	swapon --show
	uzram --noheadings --raw --output NAME,MOUNTPOINT | grep -qx 'uzram0 \[SWAP\]' || fail "uzram does not list uzram0 as swap"
	swapon --noheadings --show=NAME | grep -q '^/dev/nbd' || fail "swapon --show has no /dev/nbd"
	local status pid
	# The daemon sends a new STATUS= within a second of a device change.
	for _ in $(seq 25); do
		status=$(systemctl show -p StatusText --value uzram)
		[[ $status == "1 device:"* ]] && break
		sleep 0.2
	done
	pid=$(systemctl show -p MainPID --value uzram)
	say "deb status=\"$status\" active=$(systemctl is-active uzram),$(systemctl is-active uzram-swap)"
	[[ $status == "1 device: uzram0 on /dev/nbd0;"* ]] || fail "STATUS= is '$status'"

	check "uzram swapon --size 256M" uzram swapon --size 256M && say "deb swapon=\"$out\""
	uzram --noheadings --raw --output NAME,MOUNTPOINT | grep -qx 'uzram1 \[SWAP\]' || fail "uzram swapon made no swap uzram1"
	check "uzram swapoff uzram1" uzram swapoff uzram1

	# An upgrade's reload: the daemon re-executes in place (RELOADING=1,
	# then READY=1 from the new image), the PID and the swap stay.
	check "systemctl reload uzram" systemctl reload uzram
	for _ in $(seq 100); do
		[ "$(systemctl is-active uzram)" = active ] && uzram >/dev/null 2>&1 && break
		sleep 0.2
	done
	[ "$(systemctl show -p MainPID --value uzram)" = "$pid" ] || fail "the reload changed the daemon's PID"
	uzram --noheadings --raw --output NAME,MOUNTPOINT | grep -qx 'uzram0 \[SWAP\]' || fail "uzram0 is no longer swap after the reload"
	say "deb reload=$(systemctl is-active uzram) pid_kept=$pid"

	check "man -w uzram" man -w uzram && [ "$out" != /usr/share/man/man8/uzram.8.gz ] && fail "man -w uzram finds $out"
	MANPAGER=cat MANWIDTH=80 man uzram 2>/dev/null | grep -q '^SYNOPSIS' || fail "man uzram shows no SYNOPSIS"
	local comp
	comp=$(bash -c 'source /usr/share/bash-completion/completions/uzram; COMP_WORDS=(uzram swapoff ""); COMP_CWORD=2; _uzram; echo "${COMPREPLY[*]}"')
	[ "$comp" = uzram0 ] || fail "uzram swapoff <TAB> completes to '$comp', want uzram0"
	say "deb version=\"$(uzram --version | tr '\n' ';')\" completion=\"$comp\""

	# Stopping the daemon stops uzram-swap first, which swaps off.
	check "systemctl stop uzram" systemctl stop uzram
	[ -z "$(swapon --noheadings --show)" ] || fail "swap still on after systemctl stop uzram"
	say "deb stopped=$(systemctl is-active uzram),$(systemctl is-active uzram-swap) result=$(systemctl show -p Result --value uzram)"
	[ "$(systemctl show -p Result --value uzram)" = success ] || fail "the daemon did not stop cleanly"

	check "dpkg -r" dpkg -r uzram
	[ -e /usr/sbin/uzram ] && fail "dpkg -r left /usr/sbin/uzram"
	[ -e /etc/uzram.conf ] || fail "dpkg -r removed the conffile /etc/uzram.conf"
	check "dpkg -P" dpkg -P uzram
	[ -e /etc/uzram.conf ] && fail "dpkg -P left /etc/uzram.conf"
	[ -L /etc/systemd/system/multi-user.target.wants/uzram.service ] && fail "purge left the unit enabled"
	verdict result
}

case ${1:-} in
install)
	install_phase
	;;
systemd)
	systemd_phase
	rc=0
	[ "$failed" = 0 ] || rc=1
	echo "@@ guest-exit rc=$rc"
	sync
	systemctl poweroff --force --force
	;;
*)
	echo "usage: deb-check-guest.sh install|systemd" >&2
	exit 2
	;;
esac
