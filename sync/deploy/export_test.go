package deploy

import "io"

// Unpack is unpack without a check, for the archive tests.
func Unpack(archive io.Reader, dest string, lim Limits) error {
	return unpack(archive, dest, lim, nil)
}

// Prune is prune under the store's lock, for the store tests.
func (s *Store) Prune(model string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prune(model)
}
