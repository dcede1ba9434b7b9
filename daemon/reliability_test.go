package daemon

import (
	"net"
	"testing"
)

func TestListenTCPLoopbackByDefault(t *testing.T) {
	for _, addr := range []string{"0", ":0"} {
		l, err := ListenTCP(addr)
		if err != nil {
			t.Fatal(err)
		}
		ip := l.Addr().(*net.TCPAddr).IP
		l.Close()
		if !ip.IsLoopback() {
			t.Errorf("--listen %q bound %v, want loopback", addr, ip)
		}
	}
	l, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}

func TestParseSocketMode(t *testing.T) {
	for in, want := range map[string]uint32{"": 0o600, "0600": 0o600, "660": 0o660, "0666": 0o666} {
		m, err := ParseSocketMode(in)
		if err != nil || uint32(m) != want {
			t.Errorf("%q: %o, %v; want %o", in, m, err, want)
		}
	}
	for _, bad := range []string{"rw", "0999", "01777", "0066", "0400"} {
		if _, err := ParseSocketMode(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
