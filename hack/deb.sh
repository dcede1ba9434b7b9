#!/usr/bin/env bash
# deb.sh: build the Debian package uzram_VERSION_ARCH.deb from this repo
# with Debian's own tools: hack/install.sh stages the files under /usr,
# contrib/debian/ adds the control file, the maintainer scripts and the
# copyright, and dpkg-deb builds it (owned by root without fakeroot). Then
# lintian checks it, if installed; contrib/debian/lintian-overrides says why
# each remaining tag is acceptable.
#
# Environment (all optional):
#   OUT=.                 where the .deb goes
#   VERSION               the package version; default from the binary's
#                         version (a tag v1.2.3 gives 1.2.3), else from the
#                         commit: 0.0.0~git20261206084038.dd0b0d9
#   DEBFULLNAME, DEBEMAIL the Maintainer field
#   LINTIAN=1             0 skips lintian
# Prints the .deb's path last.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(cd "${OUT:-$repo}" && pwd)
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$repo" && CGO_ENABLED=0 go build -trimpath -buildvcs=auto -ldflags="-s -w" -o "$work/uzram" .)

# The package version: a release tag's, else the commit's date and hash,
# which sort in commit order below any release (~).
if [ -z "${VERSION:-}" ]; then
	modver=$(go version -m "$work/uzram" | awk '$1 == "mod" { print $3 }')
	case "$modver" in
	v[0-9]*.*.*-0.*-* | v0.0.0-*-* | *"(devel)"* | "")
		commit_time=$(git -C "$repo" log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S)
		commit=$(git -C "$repo" log -1 --format=%h 2>/dev/null || echo unknown)
		VERSION=0.0.0~git$commit_time.$commit
		;;
	*) VERSION=${modver#v} VERSION=${VERSION%%+*} ;;
	esac
fi
maintainer="${DEBFULLNAME:-uzram developers} <${DEBEMAIL:-uzram-devel@users.noreply.github.com}>"

root=$work/root
PREFIX=/usr DESTDIR=$root UZRAM_BIN=$work/uzram "$repo/hack/install.sh" >/dev/null
doc=$root/usr/share/doc/uzram
install -m 0644 "$repo/contrib/debian/copyright" "$doc/copyright"
# A native package's changelog: this build, dated by its commit so the
# package is the same when built again.
date=$(git -C "$repo" log -1 --format=%aD 2>/dev/null || date -R)
printf 'uzram (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
	"$VERSION" "$(git -C "$repo" log -1 --format=%H 2>/dev/null || echo unknown)" "$maintainer" "$date" |
	gzip -9n >"$doc/changelog.gz"
install -d "$root/usr/share/lintian/overrides"
install -m 0644 "$repo/contrib/debian/lintian-overrides" "$root/usr/share/lintian/overrides/uzram"

install -d "$root/DEBIAN"
for f in postinst prerm postrm; do
	install -m 0755 "$repo/contrib/debian/$f" "$root/DEBIAN/$f"
done
install -m 0644 "$repo/contrib/debian/conffiles" "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" -e "s|@SIZE@|$size|" \
	"$repo/contrib/debian/control" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

deb=$OUT/uzram_${VERSION}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null

if [ "${LINTIAN:-1}" != 0 ]; then
	if command -v lintian >/dev/null; then
		# Errors and warnings fail the build; info and pedantic tags are shown.
		lintian --info --display-info --fail-on error,warning "$deb" >&2
	else
		echo "deb.sh: lintian is not installed (apt-get install lintian): not checked" >&2
	fi
fi
echo "$deb"
