package deploy

import (
	"errors"
	"io"
	"time"
)

// Store keeps the installed bundles of each model under root (state_dir/models):
// root/<model>/<version>-<deployment>/ per bundle and root/<model>/state.json, which
// names the active and the previous bundle. Its methods are safe for concurrent use.
type Store struct{}

// ModelState is root/<model>/state.json.
type ModelState struct {
	// Active and Previous are bundle directory names under root/<model>; "" stands for
	// the bundle the config names (nothing installed).
	Active   string `json:"active"`
	Previous string `json:"previous"`
	// LastIssued and LastDeployment are of the last deployment applied (not rejected).
	LastIssued     time.Time `json:"last_issued"`
	LastDeployment string    `json:"last_deployment"`
	// History lists the last deployments seen, newest last.
	History []Record `json:"history"`
}

// Record is one deployment in a model's history.
type Record struct {
	Deployment string    `json:"deployment"`
	Action     string    `json:"action"`
	Version    string    `json:"version,omitempty"`
	Issued     time.Time `json:"issued"`
	Phase      Phase     `json:"phase"`
	Error      string    `json:"error,omitempty"`
	At         time.Time `json:"at"`
}

// OpenStore opens (creating it) the store at root with these unpack limits.
func OpenStore(root string, lim Limits) (*Store, error) { return nil, errors.New("TODO") }

// Install unpacks archive (verifying its size and SHA-256 against m before the bundle
// appears) to root/<model>/<version>-<deployment>/ and returns that directory. It does
// not activate it.
func (s *Store) Install(model string, m *Manifest, archive io.Reader) (bundleDir string, err error) {
	return "", errors.New("TODO")
}

// Activate makes bundleDir (from Install) the model's active bundle and the active one
// the previous; bundles beyond those two are removed.
func (s *Store) Activate(model, bundleDir string) error { return errors.New("TODO") }

// Rollback swaps the active and the previous bundle and returns the now active
// directory: "" means the bundle the config names.
func (s *Store) Rollback(model string) (bundleDir string, err error) { return "", errors.New("TODO") }

// Active returns the model's active bundle directory; false means the config's.
func (s *Store) Active(model string) (string, bool) { return "", false }

// State returns the model's state file as it is.
func (s *Store) State(model string) (ModelState, error) { return ModelState{}, errors.New("TODO") }

// Seen reports whether m must be ignored: its deployment id is in the model's history,
// or it was issued no later than the last deployment applied. reason says which.
func (s *Store) Seen(model string, m *Manifest) (bool, string) { return false, "" }

// Record notes the outcome of deployment m in the model's history. Unless phase is
// PhaseRejected, m also becomes the last applied deployment (LastIssued), so a
// forged manifest that fails verification cannot block later ones.
func (s *Store) Record(model string, m *Manifest, phase Phase, reason string) error {
	return errors.New("TODO")
}

// Prune removes bundle directories of the model other than the active and the
// previous one, and leftovers of interrupted installs.
func (s *Store) Prune(model string) error { return errors.New("TODO") }
