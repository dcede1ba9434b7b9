#!/bin/sh
# Runs every fuzz target of the NBD server and the state file for a set time
# each (default 60s): FUZZTIME=10m hack/fuzz.sh. New crashers land in each
# package's testdata/fuzz/, where plain `go test` replays them from then on.
set -eu
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-60s}
status=0
for target in blockdev:FuzzHandshake blockdev:FuzzRequestStream blockdev:FuzzParseRequest state:FuzzLoad; do
	pkg=${target%%:*}
	fn=${target#*:}
	if ! grep -q "func $fn(" "$pkg"/*_test.go; then
		echo "== $pkg $fn: no such target, skipped"
		continue
	fi
	echo "== $pkg $fn for $FUZZTIME"
	if ! go test -run '^$' -fuzz "^$fn\$" -fuzztime "$FUZZTIME" "./$pkg"; then
		echo "== $pkg $fn FAILED: see the crasher under $pkg/testdata/fuzz/$fn"
		status=1
	fi
done
exit $status
