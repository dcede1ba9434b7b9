#!/bin/sh
# Runs every fuzz target in the module (every `func FuzzX(f *testing.F)` in a
# _test.go file) for a set time each (default 60s): FUZZTIME=10m hack/fuzz.sh.
# New crashers land in each package's testdata/fuzz/, where plain `go test`
# replays them from then on.
set -eu
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-60s}
status=0
targets=$(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*(' . | sed 's/(.*//; s/:func /:/' | sort)
[ -n "$targets" ] || { echo "fuzz.sh: no fuzz targets found"; exit 1; }
for target in $targets; do
	pkg=$(dirname "${target%%:*}")
	fn=${target#*:}
	echo "== $pkg $fn for $FUZZTIME"
	if ! go test -run '^$' -fuzz "^$fn\$" -fuzztime "$FUZZTIME" "$pkg"; then
		echo "== $pkg $fn FAILED: see the crasher under $pkg/testdata/fuzz/$fn"
		status=1
	fi
done
exit $status
