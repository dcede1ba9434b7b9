package pagestore

import (
	"bytes"
	"errors"
	"testing"
)

func TestOverwriteAtLimit(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := bytes.Repeat([]byte{1}, 1000)
	h, err := s.Put(a)
	if err != nil {
		t.Fatal(err)
	}
	// Fill the limit to exactly what is held: any new span is refused.
	s.SetLimit(s.Stats().MemUsed)
	var held []Handle
	for {
		h2, err := s.Put(bytes.Repeat([]byte{2}, 1000))
		if errors.Is(err, ErrLimit) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h2)
	}
	b := bytes.Repeat([]byte{3}, s.ClassSize(1000)) // the largest object of the same class
	if !s.Overwrite(h, b) {
		t.Fatal("same-class overwrite refused")
	}
	got := make([]byte, 4096)
	if n := s.Read(h, got); !bytes.Equal(got[:n], b) {
		t.Fatal("overwrite did not take")
	}
	if s.Overwrite(h, bytes.Repeat([]byte{4}, 3000)) {
		t.Fatal("overwrite into another class succeeded")
	}
	if n := s.Read(h, got); !bytes.Equal(got[:n], b) {
		t.Fatal("refused overwrite changed the object")
	}
	var want int64 = int64(len(b)) + int64(len(held))*1000
	if ob := s.Stats().ObjBytes; ob != want {
		t.Fatalf("ObjBytes %d, want %d", ob, want)
	}
}
