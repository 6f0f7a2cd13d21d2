package deploy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/infer/modelfile"
)

func TestStoreInstallActivateRollback(t *testing.T) {
	archive, sha := realArchive(t)
	_, priv := newKey(t)
	root := filepath.Join(t.TempDir(), "models")
	s, err := OpenStore(root, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if dir, ok := s.Active("default"); ok {
		t.Fatalf("empty store has an active bundle %s", dir)
	}
	if _, err := s.Rollback("default"); err == nil {
		t.Error("Rollback with nothing installed: no error")
	}

	install := func(id, version string, issued time.Time) (string, *Manifest) {
		t.Helper()
		m := signedManifest(t, archive, sha, priv, DefaultChunkSize)
		m.Deployment, m.Bundle.Version, m.Issued = id, version, issued
		dir, err := s.Install("default", m, bytes.NewReader(archive))
		if err != nil {
			t.Fatalf("Install %s: %v", id, err)
		}
		if want := filepath.Join(root, "default", version+"-"+id); dir != want {
			t.Fatalf("installed to %s, want %s", dir, want)
		}
		return dir, m
	}
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	a, ma := install("dep-a", "1.0.0", t0)
	// The installed bundle is the real one, whole: model.yaml fits its model.
	if _, _, err := modelfile.CheckBundle(a); err != nil {
		t.Fatalf("installed bundle: %v", err)
	}
	if err := s.Activate("default", a); err != nil {
		t.Fatal(err)
	}
	if err := s.Record("default", ma, PhaseActive, ""); err != nil {
		t.Fatal(err)
	}
	if dir, ok := s.Active("default"); !ok || dir != a {
		t.Fatalf("Active = %s, %v; want %s", dir, ok, a)
	}

	b, mb := install("dep-b", "1.1.0", t0.Add(time.Hour))
	// Installed, not active, and safe from pruning until activated.
	if err := s.Prune("default"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b); err != nil {
		t.Fatalf("Prune removed a pending install: %v", err)
	}
	if err := s.Activate("default", b); err != nil {
		t.Fatal(err)
	}
	s.Record("default", mb, PhaseActive, "")
	st, err := s.State("default")
	if err != nil {
		t.Fatal(err)
	}
	if st.Active != "1.1.0-dep-b" || st.Previous != "1.0.0-dep-a" || st.LastDeployment != "dep-b" || !st.LastIssued.Equal(mb.Issued) {
		t.Fatalf("state after two activations: %+v", st)
	}

	c, mc := install("dep-c", "1.2.0", t0.Add(2*time.Hour))
	if err := s.Activate("default", c); err != nil {
		t.Fatal(err)
	}
	s.Record("default", mc, PhaseActive, "")
	// a is neither active nor previous any more: pruned.
	if _, err := os.Stat(a); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bundle %s not pruned: %v", a, err)
	}
	if _, err := os.Stat(b); err != nil {
		t.Errorf("previous bundle %s removed: %v", b, err)
	}

	// Rollback swaps active and previous, and back.
	if dir, err := s.Rollback("default"); err != nil || dir != b {
		t.Fatalf("Rollback = %s, %v; want %s", dir, err, b)
	}
	if dir, _ := s.Active("default"); dir != b {
		t.Fatalf("Active after rollback = %s", dir)
	}
	if dir, err := s.Rollback("default"); err != nil || dir != c {
		t.Fatalf("second Rollback = %s, %v; want %s", dir, err, c)
	}

	// Discard refuses the active and previous bundles, removes a failed install.
	d, _ := install("dep-d", "2.0.0", t0.Add(3*time.Hour))
	if err := s.Discard("default", c); err == nil {
		t.Error("Discard of the active bundle: no error")
	}
	if err := s.Discard("default", d); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
		t.Error("Discard left the bundle")
	}
	if err := s.Activate("default", filepath.Join(root, "other", "x")); err == nil {
		t.Error("Activate of a directory outside the model: no error")
	}
	if err := s.Activate("default", filepath.Join(root, "default", "nope")); err == nil {
		t.Error("Activate of a bundle that is not installed: no error")
	}

	// The state survives reopening the store (an agent restart).
	s2, err := OpenStore(root, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if dir, ok := s2.Active("default"); !ok || dir != c {
		t.Fatalf("after reopening: Active = %s, %v", dir, ok)
	}
}

// TestStoreRollbackToConfigBundle: after the first deployment, the previous bundle is
// the config's ("").
func TestStoreRollbackToConfigBundle(t *testing.T) {
	archive, sha := realArchive(t)
	_, priv := newKey(t)
	s, _ := OpenStore(t.TempDir(), Limits{})
	m := signedManifest(t, archive, sha, priv, DefaultChunkSize)
	dir, err := s.Install("cam-2", m, bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Activate("cam-2", dir); err != nil {
		t.Fatal(err)
	}
	back, err := s.Rollback("cam-2")
	if err != nil || back != "" {
		t.Fatalf("Rollback = %q, %v; want \"\" (the config's bundle)", back, err)
	}
	if _, ok := s.Active("cam-2"); ok {
		t.Error("after rolling back to the config's bundle, Active still names one")
	}
	if again, err := s.Rollback("cam-2"); err != nil || again != dir {
		t.Errorf("rolling forward again = %q, %v; want %s", again, err, dir)
	}
}

// A bundle that failed after going live is reverted: the one before it is active again
// and the failed one is gone, so a later rollback cannot bring it back.
func TestStoreRevert(t *testing.T) {
	archive, sha := realArchive(t)
	_, priv := newKey(t)
	s, _ := OpenStore(t.TempDir(), Limits{})
	m := signedManifest(t, archive, sha, priv, DefaultChunkSize)
	dir, err := s.Install("cam-2", m, bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Activate("cam-2", dir); err != nil {
		t.Fatal(err)
	}
	back, err := s.Revert("cam-2")
	if err != nil || back != "" {
		t.Fatalf("Revert = %q, %v; want \"\" (the config's bundle)", back, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the failed bundle is still on disk: %v", err)
	}
	if again, err := s.Rollback("cam-2"); err == nil {
		t.Errorf("a rollback after a revert returned to %q", again)
	}
}

// A shadow candidate is kept (Prune and Activate leave it), replaced by the next one,
// and cleared: removed, unless a promotion made it the active bundle.
func TestStoreShadow(t *testing.T) {
	archive, sha := realArchive(t)
	_, priv := newKey(t)
	s, _ := OpenStore(t.TempDir(), Limits{})
	install := func(id string) string {
		t.Helper()
		m := signedManifest(t, archive, sha, priv, DefaultChunkSize)
		m.Deployment, m.Action = id, ActionShadow
		dir, err := s.Install("default", m, bytes.NewReader(archive))
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}
	if _, _, ok := s.Shadow("default"); ok {
		t.Fatal("an empty store has a shadow")
	}
	first := install("sh-1")
	if err := s.SetShadow("default", first, "sh-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Prune("default"); err != nil {
		t.Fatal(err)
	}
	if dir, dep, ok := s.Shadow("default"); !ok || dir != first || dep != "sh-1" {
		t.Fatalf("Shadow = %s, %s, %v", dir, dep, ok)
	}
	if err := s.Discard("default", first); err == nil {
		t.Error("Discard removed the shadow candidate")
	}
	second := install("sh-2")
	if err := s.SetShadow("default", second, "sh-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(first); !os.IsNotExist(err) {
		t.Errorf("the replaced shadow is still on disk: %v", err)
	}
	// Promoted: active, and clearing the shadow keeps its files.
	if err := s.Activate("default", second); err != nil {
		t.Fatal(err)
	}
	if err := s.ClearShadow("default"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.Shadow("default"); ok {
		t.Error("still a shadow after ClearShadow")
	}
	if active, _ := s.Active("default"); active != second {
		t.Fatalf("active %s, want the promoted %s", active, second)
	}
	if _, err := os.Stat(second); err != nil {
		t.Errorf("the promoted bundle was removed: %v", err)
	}
	// Discarded: cleared and removed.
	third := install("sh-3")
	s.SetShadow("default", third, "sh-3")
	if err := s.ClearShadow("default"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(third); !os.IsNotExist(err) {
		t.Errorf("the discarded shadow is still on disk: %v", err)
	}
}

func TestStoreInstallRefusesMismatch(t *testing.T) {
	archive, sha := realArchive(t)
	_, priv := newKey(t)
	root := t.TempDir()
	s, _ := OpenStore(root, Limits{})
	m := signedManifest(t, archive, sha, priv, DefaultChunkSize)

	corrupt := append([]byte(nil), archive...)
	corrupt[len(corrupt)/2] ^= 1 // inside model.onnx: still a valid tar
	longer := append(append([]byte(nil), archive...), make([]byte, 512)...)
	for name, data := range map[string][]byte{"corrupt": corrupt, "longer": longer, "shorter": archive[:len(archive)-512]} {
		if _, err := s.Install("default", m, bytes.NewReader(data)); !errors.Is(err, ErrDigestMismatch) {
			t.Errorf("%s archive: err = %v, want ErrDigestMismatch", name, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "default")); len(entries) != 0 {
		t.Errorf("refused installs left %v", entries)
	}
	// Store limits apply.
	small, _ := OpenStore(t.TempDir(), Limits{MaxBytes: 1 << 20})
	if _, err := small.Install("default", m, bytes.NewReader(archive)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("archive over the store's limit: %v", err)
	}
	if _, err := s.Install("../x", m, bytes.NewReader(archive)); err == nil {
		t.Error("Install with a model name that leaves the store: no error")
	}
	// A malicious archive whose digest is what the manifest says is still refused.
	evil := craft(t, file("../escape", "x"))
	me := signedManifest(t, evil, sha256Hex(evil), priv, DefaultChunkSize)
	if _, err := s.Install("default", me, bytes.NewReader(evil)); !errors.Is(err, ErrUnsafeArchive) {
		t.Errorf("path traversal with a matching digest: err = %v, want ErrUnsafeArchive", err)
	}
	if _, err := os.Stat(filepath.Join(root, "escape")); !errors.Is(err, os.ErrNotExist) {
		t.Error("the traversal escaped")
	}
}

func TestStoreSeen(t *testing.T) {
	s, _ := OpenStore(t.TempDir(), Limits{})
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	mk := func(id string, issued time.Time) *Manifest {
		return &Manifest{Deployment: id, Action: ActionDeploy, Model: "default", Issued: issued, Bundle: &BundleRef{Name: "n", Version: "1"}}
	}
	m1 := mk("d1", t0)
	if seen, why := s.Seen("default", m1); seen {
		t.Fatalf("new deployment seen: %s", why)
	}
	s.Record("default", m1, PhaseReceived, "")
	if seen, why := s.Seen("default", m1); !seen || !strings.Contains(why, "already seen") {
		t.Fatalf("replayed deployment: seen %v (%s)", seen, why)
	}
	s.Record("default", m1, PhaseActive, "")
	if st, _ := s.State("default"); len(st.History) != 1 || st.History[0].Phase != PhaseActive {
		t.Fatalf("a second Record of one deployment: history %+v", st.History)
	}

	// Older or as old as the last applied: ignored.
	for _, issued := range []time.Time{t0, t0.Add(-time.Second)} {
		if seen, why := s.Seen("default", mk("d-old", issued)); !seen || !strings.Contains(why, "not after the last applied deployment d1") {
			t.Errorf("deployment issued %v: seen %v (%s)", issued, seen, why)
		}
	}
	// A rejected deployment (a forged one, say) issued far in the future does not
	// block the next real one.
	forged := mk("forged", t0.AddDate(100, 0, 0))
	s.Record("default", forged, PhaseRejected, "bad signature")
	if seen, why := s.Seen("default", mk("d2", t0.Add(time.Minute))); seen {
		t.Errorf("after a rejected future manifest a newer real one is ignored: %s", why)
	}
	// A rollback that was applied counts as applied.
	rb := &Manifest{Deployment: "rb", Action: ActionRollback, Model: "default", Issued: t0.Add(2 * time.Minute)}
	s.Record("default", rb, PhaseRolledBack, "")
	if seen, _ := s.Seen("default", mk("d3", t0.Add(time.Minute+time.Second))); !seen {
		t.Error("a deployment issued before an applied rollback is not ignored")
	}
	// Models are independent.
	if seen, _ := s.Seen("other", mk("d-old", t0)); seen {
		t.Error("another model's history applies")
	}
	// The history is bounded.
	for i := range HistoryLen + 5 {
		s.Record("default", mk("bulk-"+strconv.Itoa(i), t0), PhaseRejected, "x")
	}
	if st, _ := s.State("default"); len(st.History) != HistoryLen || st.History[HistoryLen-1].Deployment != "bulk-"+strconv.Itoa(HistoryLen+4) {
		t.Errorf("history of %d entries ending %+v", len(st.History), st.History[len(st.History)-1])
	}
	// A state file that cannot be read protects nothing: everything is ignored, saying why.
	os.WriteFile(filepath.Join(s.Root(), "default", stateFile), []byte("{"), 0o644)
	if seen, why := s.Seen("default", mk("d9", t0.AddDate(1, 0, 0))); !seen || !strings.Contains(why, stateFile) {
		t.Errorf("corrupt state file: seen %v (%s)", seen, why)
	}
}

func TestFreeBytes(t *testing.T) {
	free, err := FreeBytes(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if free == 0 {
		t.Error("FreeBytes = 0 on the test's temporary directory")
	}
	if _, err := FreeBytes(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("FreeBytes of a missing path: no error")
	}
}
