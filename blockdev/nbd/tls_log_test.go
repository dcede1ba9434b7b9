package nbd

import (
	"testing"
	"time"
)

// The rejected-handshake log lets logBurst lines through per logWindow and
// says how many it left out in the next line it lets through.
func TestLogLimit(t *testing.T) {
	var l logLimit
	now := time.Now()
	for i := range logBurst {
		if ok, dropped := l.allow(now); !ok || dropped != 0 {
			t.Fatalf("line %d: allowed %v, dropped %d", i, ok, dropped)
		}
	}
	for range 7 {
		if ok, _ := l.allow(now.Add(time.Second)); ok {
			t.Fatal("a line past the burst got through")
		}
	}
	if ok, dropped := l.allow(now.Add(logWindow)); !ok || dropped != 7 {
		t.Fatalf("next window: allowed %v, dropped %d; want true, 7", ok, dropped)
	}
}
