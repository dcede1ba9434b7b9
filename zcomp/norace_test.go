//go:build !race

package zcomp

const raceEnabled = false
