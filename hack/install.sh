#!/usr/bin/env bash
# install.sh: build uzram and install it where the FHS puts a system tool:
# the binary, the systemd units, the config file, the man page, bash and
# zsh completion. `make install` runs it.
#
#   hack/install.sh                      # into /usr/local (as root)
#   PREFIX=/usr DESTDIR=/tmp/stage hack/install.sh   # staged, as hack/deb.sh does
#
# Environment (all optional):
#   PREFIX=/usr/local     where the binary and its files go
#   DESTDIR=              a staging root prefixed to every path
#   SBINDIR=$PREFIX/sbin  the binary (an administrator's tool, as zramctl)
#   UNITDIR               systemd units: $PREFIX/lib/systemd/system, which
#                         systemd reads for /usr/local too; /lib/systemd/system
#                         for PREFIX=/usr (Debian 12)
#   SYSCONFDIR=/etc       uzram.conf, installed only if there is none yet
#   MANDIR=$PREFIX/share/man, DOCDIR=$PREFIX/share/doc/uzram
#   BASHCOMPDIR, ZSHCOMPDIR  completion (bash-completion's and zsh's places)
#   UZRAM_BIN             install this binary instead of building one
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
SBINDIR=${SBINDIR:-$PREFIX/sbin}
if [ "$PREFIX" = /usr ]; then
	UNITDIR=${UNITDIR:-/lib/systemd/system}
	ZSHCOMPDIR=${ZSHCOMPDIR:-/usr/share/zsh/vendor-completions}
else
	UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
	ZSHCOMPDIR=${ZSHCOMPDIR:-$PREFIX/share/zsh/site-functions}
fi
SYSCONFDIR=${SYSCONFDIR:-/etc}
MANDIR=${MANDIR:-$PREFIX/share/man}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/uzram}
BASHCOMPDIR=${BASHCOMPDIR:-$PREFIX/share/bash-completion/completions}

bin=${UZRAM_BIN:-}
if [ -z "$bin" ]; then
	build=$(mktemp -d)
	trap 'rm -rf "$build"' EXIT
	bin=$build/uzram
	# Static (no cgo: nothing to depend on but the kernel), stripped, and
	# stamped with the commit when built from a git checkout (-buildvcs
	# overrides a GOFLAGS=-buildvcs=false).
	(cd "$repo" && CGO_ENABLED=0 go build -trimpath -buildvcs=auto -ldflags="-s -w" -o "$bin" .)
fi

install -d "$DESTDIR$SBINDIR" "$DESTDIR$UNITDIR" "$DESTDIR$MANDIR/man8" "$DESTDIR$DOCDIR" \
	"$DESTDIR$BASHCOMPDIR" "$DESTDIR$ZSHCOMPDIR" "$DESTDIR$SYSCONFDIR"
install -m 0755 "$bin" "$DESTDIR$SBINDIR/uzram"
# The units name the binary where this install puts it.
for u in uzram.service uzram-swap.service; do
	sed "s|/usr/local/sbin/uzram|$SBINDIR/uzram|g" "$repo/contrib/$u" >"$DESTDIR$UNITDIR/$u"
	chmod 0644 "$DESTDIR$UNITDIR/$u"
done
# The man page comes from the binary's own CLI definition (uzram man).
"$bin" man | gzip -9n >"$DESTDIR$MANDIR/man8/uzram.8.gz"
chmod 0644 "$DESTDIR$MANDIR/man8/uzram.8.gz"
install -m 0644 "$repo/contrib/completion/uzram.bash" "$DESTDIR$BASHCOMPDIR/uzram"
install -m 0644 "$repo/contrib/completion/uzram.zsh" "$DESTDIR$ZSHCOMPDIR/_uzram"
install -m 0644 "$repo/README.md" "$DESTDIR$DOCDIR/README.md"
install -d "$DESTDIR$DOCDIR/examples"
install -m 0644 "$repo/contrib/uzram.conf" "$DESTDIR$DOCDIR/examples/uzram.conf"
# An admin's config stays as it is.
if [ -e "$DESTDIR$SYSCONFDIR/uzram.conf" ]; then
	echo "install.sh: $DESTDIR$SYSCONFDIR/uzram.conf exists, left as it is (the example: $DOCDIR/examples/uzram.conf)"
else
	install -m 0644 "$repo/contrib/uzram.conf" "$DESTDIR$SYSCONFDIR/uzram.conf"
fi

if [ -z "$DESTDIR" ]; then
	systemctl daemon-reload 2>/dev/null || true
	echo "install.sh: installed $SBINDIR/uzram $("$SBINDIR/uzram" --version | head -1)"
	echo "install.sh: start with: systemctl enable --now uzram uzram-swap"
fi
