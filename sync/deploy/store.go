package deploy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// HistoryLen is how many deployments a model's history keeps.
const HistoryLen = 20

const stateFile = "state.json"

// Store keeps the installed bundles of each model under root (state_dir/models):
// root/<model>/<version>-<deployment>/ per bundle and root/<model>/state.json, which
// names the active and the previous bundle. Its methods are safe for concurrent use.
type Store struct {
	root string
	lim  Limits

	// mu serialises the read-modify-write of state files and guards pending. It is
	// held around small file I/O on purpose: two updates of one state file must not
	// interleave, and they are rare (a deployment's few phase changes).
	mu sync.Mutex
	// pending holds bundle dirs installed and not yet activated or discarded, which
	// prune must leave alone.
	pending map[string]bool
}

// ModelState is root/<model>/state.json.
type ModelState struct {
	// Active and Previous are bundle directory names under root/<model>; "" stands for
	// the bundle the config names (nothing installed).
	Active   string `json:"active"`
	Previous string `json:"previous"`
	// Shadow is the bundle a shadow deployment (ShadowDeployment) installed to run
	// beside the active one until it is promoted or discarded; "" when there is none.
	Shadow           string `json:"shadow,omitempty"`
	ShadowDeployment string `json:"shadow_deployment,omitempty"`
	// LastIssued and LastDeployment are of the last deployment applied (that reached
	// active or rolled_back).
	LastIssued     time.Time `json:"last_issued"`
	LastDeployment string    `json:"last_deployment"`
	// History lists the last HistoryLen deployments seen, newest last.
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

// OpenStore opens (creating it) the store at root with these unpack limits (zero
// fields: the defaults).
func OpenStore(root string, lim Limits) (*Store, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("open model store: %w", err)
	}
	return &Store{root: root, lim: lim.withDefaults(), pending: map[string]bool{}}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

func (s *Store) modelDir(model string) (string, error) {
	if !nameRE.MatchString(model) {
		return "", fmt.Errorf("model store: %q is not a model name", model)
	}
	return filepath.Join(s.root, model), nil
}

// Install unpacks archive to root/<model>/<version>-<deployment>/ and returns that
// directory. The archive's size and SHA-256 are checked against m before the
// directory appears (an error wrapping ErrDigestMismatch otherwise), and unpack's
// rules and the store's limits apply. It does not activate the bundle; until
// Activate or Discard, pruning leaves it alone.
func (s *Store) Install(model string, m *Manifest, archive io.Reader) (bundleDir string, err error) {
	dir, err := s.modelDir(model)
	if err != nil {
		return "", err
	}
	if !m.CarriesBundle() || m.Bundle == nil || !versionRE.MatchString(m.Bundle.Version) || !idRE.MatchString(m.Deployment) {
		return "", fmt.Errorf("install deployment %s: not a valid deploy manifest", m.Deployment)
	}
	if m.Size > s.lim.MaxBytes {
		return "", fmt.Errorf("install deployment %s: archive of %d bytes is over the limit of %d", m.Deployment, m.Size, s.lim.MaxBytes)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("install deployment %s: %w", m.Deployment, err)
	}
	dest := filepath.Join(dir, m.Bundle.Version+"-"+m.Deployment)
	h := sha256.New()
	// Never read past the size the manifest promises: a longer stream is a mismatch.
	cr := &countReader{r: io.LimitReader(archive, m.Size+1)}
	tee := io.TeeReader(cr, h)
	check := func() error {
		// The tar reader stops at the end-of-archive marker; what follows is hashed too.
		if _, err := io.Copy(io.Discard, tee); err != nil {
			return fmt.Errorf("install deployment %s: %w", m.Deployment, err)
		}
		if sha := hex.EncodeToString(h.Sum(nil)); cr.n != m.Size || sha != m.SHA256 {
			return fmt.Errorf("install deployment %s: %w: got %d bytes with SHA-256 %s, manifest says %d bytes, %s",
				m.Deployment, ErrDigestMismatch, cr.n, sha, m.Size, m.SHA256)
		}
		return nil
	}
	s.mu.Lock()
	s.pending[dest] = true
	s.mu.Unlock()
	if err := unpack(tee, dest, s.lim, check); err != nil {
		s.mu.Lock()
		delete(s.pending, dest)
		s.mu.Unlock()
		return "", fmt.Errorf("install deployment %s: %w", m.Deployment, err)
	}
	return dest, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// bundleName checks that bundleDir is a bundle directory of the model in this store
// and returns its name.
func (s *Store) bundleName(model, bundleDir string) (string, error) {
	dir, err := s.modelDir(model)
	if err != nil {
		return "", err
	}
	name := filepath.Base(bundleDir)
	if filepath.Clean(bundleDir) != filepath.Join(dir, name) || name == stateFile || strings.HasSuffix(name, ".tmp") {
		return "", fmt.Errorf("model store: %s is not a bundle of model %s under %s", bundleDir, model, dir)
	}
	if fi, err := os.Stat(bundleDir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("model store: %s is not an installed bundle", bundleDir)
	}
	return name, nil
}

// Activate makes bundleDir (from Install) the model's active bundle and the active one
// the previous; bundles beyond those two (and not pending) are removed.
func (s *Store) Activate(model, bundleDir string) error {
	name, err := s.bundleName(model, bundleDir)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.update(model, func(st *ModelState) error {
		if st.Active != name {
			st.Previous, st.Active = st.Active, name
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("activate %s: %w", bundleDir, err)
	}
	delete(s.pending, filepath.Clean(bundleDir))
	return s.prune(model)
}

// Rollback swaps the active and the previous bundle and returns the now active
// directory: "" means the bundle the config names. With neither an active nor a
// previous bundle there is nothing to return to: an error.
func (s *Store) Rollback(model string) (bundleDir string, err error) {
	dir, err := s.modelDir(model)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var active string
	err = s.update(model, func(st *ModelState) error {
		if st.Active == "" && st.Previous == "" {
			return fmt.Errorf("model %s has no previous bundle to roll back to", model)
		}
		st.Active, st.Previous = st.Previous, st.Active
		active = st.Active
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("roll back: %w", err)
	}
	if active == "" {
		return "", nil
	}
	return filepath.Join(dir, active), nil
}

// Revert abandons the active bundle, which failed after it went live: the previous one
// becomes active again, and the failed one is removed rather than kept as the previous
// (so that a later rollback cannot bring it back). It returns the now active directory,
// "" for the bundle the config names.
func (s *Store) Revert(model string) (bundleDir string, err error) {
	dir, err := s.modelDir(model)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var active, failed string
	err = s.update(model, func(st *ModelState) error {
		failed = st.Active
		st.Active, st.Previous = st.Previous, ""
		active = st.Active
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("revert: %w", err)
	}
	if failed != "" {
		if err := os.RemoveAll(filepath.Join(dir, failed)); err != nil {
			return "", fmt.Errorf("revert: remove the failed bundle: %w", err)
		}
	}
	if active == "" {
		return "", nil
	}
	return filepath.Join(dir, active), nil
}

// Active returns the model's active bundle directory; false means the config's (also
// when the state file cannot be read: State says why).
func (s *Store) Active(model string) (string, bool) {
	st, err := s.State(model)
	if err != nil || st.Active == "" {
		return "", false
	}
	return filepath.Join(s.root, model, st.Active), true
}

// State returns the model's state file as it is (the zero state when there is none).
func (s *Store) State(model string) (ModelState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read(model)
}

func (s *Store) read(model string) (ModelState, error) {
	dir, err := s.modelDir(model)
	if err != nil {
		return ModelState{}, err
	}
	var st ModelState
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err == nil {
		err = json.Unmarshal(data, &st)
	}
	if err != nil {
		return ModelState{}, fmt.Errorf("model store: %s: %w", filepath.Join(dir, stateFile), err)
	}
	return st, nil
}

// update applies f to the model's state and writes it atomically. s.mu is held.
func (s *Store) update(model string, f func(st *ModelState) error) error {
	st, err := s.read(model)
	if err != nil {
		return err
	}
	if err := f(&st); err != nil {
		return err
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Join(s.root, model)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, stateFile), append(data, '\n'), 0o644)
}

// Seen reports whether m must be ignored: its deployment id is in the model's history,
// or it was issued no later than the last deployment applied. reason says which.
func (s *Store) Seen(model string, m *Manifest) (bool, string) {
	st, err := s.State(model)
	if err != nil {
		// A state file that cannot be read protects nothing; say so rather than
		// deploying over it.
		return true, err.Error()
	}
	for _, r := range st.History {
		if r.Deployment == m.Deployment {
			return true, fmt.Sprintf("deployment %s was already seen (phase %s)", m.Deployment, r.Phase)
		}
	}
	if !st.LastIssued.IsZero() && !m.Issued.After(st.LastIssued) {
		return true, fmt.Sprintf("deployment %s was issued %s, not after the last applied deployment %s (issued %s)",
			m.Deployment, m.Issued.Format(time.RFC3339Nano), st.LastDeployment, st.LastIssued.Format(time.RFC3339Nano))
	}
	return false, ""
}

// Record notes deployment m in the model's history with its phase (a later Record of
// the same deployment updates its entry), so Seen ignores it from then on. Only a
// deployment that reached active or rolled_back becomes the last applied one
// (LastIssued): a forged or broken manifest, rejected, cannot block later ones.
func (s *Store) Record(model string, m *Manifest, phase Phase, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.update(model, func(st *ModelState) error {
		r := Record{Deployment: m.Deployment, Action: m.Action, Issued: m.Issued, Phase: phase, Error: reason, At: time.Now().UTC()}
		if m.Bundle != nil {
			r.Version = m.Bundle.Version
		}
		replaced := false
		for i := range st.History {
			if st.History[i].Deployment == m.Deployment {
				st.History[i], replaced = r, true
			}
		}
		if !replaced {
			st.History = append(st.History, r)
		}
		if n := len(st.History); n > HistoryLen {
			st.History = append([]Record(nil), st.History[n-HistoryLen:]...)
		}
		if (phase == PhaseActive || phase == PhaseRolledBack) && m.Issued.After(st.LastIssued) {
			st.LastIssued, st.LastDeployment = m.Issued, m.Deployment
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record deployment %s: %w", m.Deployment, err)
	}
	return nil
}

// SetShadow makes bundleDir (from Install) the model's shadow candidate, installed by
// deployment. A shadow it replaces is removed unless it is the active or previous one.
func (s *Store) SetShadow(model, bundleDir, deployment string) error {
	name, err := s.bundleName(model, bundleDir)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.update(model, func(st *ModelState) error {
		st.Shadow, st.ShadowDeployment = name, deployment
		return nil
	})
	if err != nil {
		return fmt.Errorf("set shadow %s: %w", bundleDir, err)
	}
	delete(s.pending, filepath.Clean(bundleDir))
	return s.prune(model)
}

// Shadow returns the model's shadow candidate and the deployment that installed it;
// ok is false when there is none.
func (s *Store) Shadow(model string) (bundleDir, deployment string, ok bool) {
	st, err := s.State(model)
	if err != nil || st.Shadow == "" {
		return "", "", false
	}
	return filepath.Join(s.root, model, st.Shadow), st.ShadowDeployment, true
}

// ClearShadow forgets the model's shadow candidate and removes its directory, unless a
// promotion made it the active (or previous) bundle.
func (s *Store) ClearShadow(model string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.update(model, func(st *ModelState) error {
		st.Shadow, st.ShadowDeployment = "", ""
		return nil
	})
	if err != nil {
		return fmt.Errorf("clear shadow: %w", err)
	}
	return s.prune(model)
}

// Discard removes an installed bundle that did not become active (rejected in
// warm-up). The active and the previous bundle are refused.
func (s *Store) Discard(model, bundleDir string) error {
	name, err := s.bundleName(model, bundleDir)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.read(model)
	if err != nil {
		return err
	}
	if name == st.Active || name == st.Previous || name == st.Shadow {
		return fmt.Errorf("discard %s: it is the model's active, previous or shadow bundle", bundleDir)
	}
	delete(s.pending, filepath.Clean(bundleDir))
	if err := os.RemoveAll(bundleDir); err != nil {
		return fmt.Errorf("discard bundle: %w", err)
	}
	return nil
}

// prune removes the model's bundle directories other than the active, the previous
// and pending installs, and leftovers of interrupted installs. Activate, SetShadow and
// ClearShadow call it with s.mu held.
func (s *Store) prune(model string) error {
	st, err := s.read(model)
	if err != nil {
		return err
	}
	dir := filepath.Join(s.root, model)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("prune model %s: %w", model, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(dir, name)
		if name == stateFile || name == st.Active || name == st.Previous || name == st.Shadow || s.pending[p] || s.pending[strings.TrimSuffix(p, ".tmp")] {
			continue
		}
		if !e.IsDir() && !strings.HasSuffix(name, ".tmp") {
			continue // not ours to remove
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("prune model %s: %w", model, err)
	}
	return nil
}
