package pagestore

// Overwrite replaces the contents of object h with data in place when data
// falls in the same size class as the object, and reports whether it did.
// It takes no new memory, so a device at its mem_limit can still rewrite a
// page whose new contents compress to the same class; when the class
// differs it changes nothing and returns false.
func (s *Store) Overwrite(h Handle, data []byte) bool {
	n := len(data)
	if n < 1 || n > MaxObjectSize {
		return false
	}
	e, v := s.handles.liveEntry(h)
	old := entSize(v)
	c := s.classFor(old)
	if s.classFor(n) != c {
		return false
	}
	c.mu.Lock()
	v = e.Load() // compaction may have moved it
	copy(s.slotMem(c, c.spans[entSpan(v)], entSlot(v), n), data)
	e.Store(entEncode(entSpan(v), entSlot(v), n))
	c.objBytes += int64(n - old)
	c.mu.Unlock()
	return true
}
