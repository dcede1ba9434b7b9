package pagestore

import "errors"

// ErrWouldWait is TryPut's answer when the object needs memory the refiller
// has not prepared yet: Put would wait for it.
var ErrWouldWait = errors.New("pagestore: put would wait for the refiller")

// TryPut is Put that never waits for the refiller: a caller that must not
// block (the NBD reader serving a write itself) falls back to a Put
// elsewhere. Nothing is stored when it fails.
func (s *Store) TryPut(data []byte) (Handle, error) { return s.put(data, false) }

// putErr is the error a Put (wait) or TryPut returns for err.
func (s *Store) putErr(err error, wait bool) error {
	if err == errRefill && !wait {
		s.kickRefill()
		return ErrWouldWait
	}
	return s.refillErr(err)
}
