package stills

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/infer"
)

func frame(t *testing.T, seq uint64) capture.Frame {
	t.Helper()
	m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(seq*40%255), 90, 200, 0), 120, 160, gocv.MatTypeCV8UC3)
	t.Cleanup(func() { m.Close() })
	return capture.Frame{Mat: m, Seq: seq, Time: time.Date(2026, 12, 7, 10, 0, 0, int(seq)*int(time.Millisecond), time.UTC)}
}

// The budget holds: the oldest frames (and their sidecars) go first, the newest stays,
// and a new store finds what an earlier one left.
func TestStoreKeepsTheNewestWithinItsBudget(t *testing.T) {
	dir := t.TempDir()
	dets := []infer.Detection{{Label: "person", Score: 0.9, Box: [4]float32{10, 10, 80, 100}}}
	probe := NewStore(t.TempDir(), 1<<30, false, nil)
	name, problem := probe.Save("door", frame(t, 1), dets)
	if name == "" {
		t.Fatalf("save: %s", problem)
	}
	one, _ := os.Stat(filepath.Join(probe.Dir(), name))

	s := NewStore(dir, 3*one.Size()+one.Size()/2, false, nil) // room for three
	var names []string
	for seq := range uint64(5) {
		name, problem := s.SaveWith("door", frame(t, seq+1), dets, []byte(`{"camera":"door"}`))
		if name == "" {
			t.Fatalf("save %d: %s", seq, problem)
		}
		names = append(names, name)
	}
	got := s.List()
	if len(got) != 3 || got[2] != names[4] || got[0] != names[2] {
		t.Fatalf("stored %v, want the last three of %v", got, names)
	}
	for _, gone := range names[:2] {
		if _, err := os.Stat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s is still on disk: %v", gone, err)
		}
	}
	if files, bytes := s.Usage(); files != 3 || bytes > 3*one.Size()+one.Size()/2 {
		t.Errorf("usage %d files, %d bytes", files, bytes)
	}
	if again := NewStore(dir, 1<<30, false, nil).List(); len(again) != 3 {
		t.Errorf("a new store over the same directory lists %v", again)
	}
	select {
	case <-s.Saved():
	default:
		t.Error("no token on Saved after a save")
	}
}

// Names from a request are checked: only a stored file's own name maps to a path.
func TestStorePathRefusesOtherFiles(t *testing.T) {
	s := NewStore(t.TempDir(), 1<<20, true, nil)
	for _, bad := range []string{"../secret.jpg", "a/b.jpg", ".hidden.jpg", "x.txt", ""} {
		if p := s.Path(bad); p != "" {
			t.Errorf("Path(%q) = %q, want refused", bad, p)
		}
	}
	if p := s.Path("door-1.jpg"); p != filepath.Join(s.Dir(), "door-1.jpg") {
		t.Errorf("Path of a stored name: %q", p)
	}
}

// An off store (budget 0) keeps nothing and says nothing is wrong.
func TestStoreOff(t *testing.T) {
	s := NewStore(t.TempDir(), 0, false, nil)
	if name, problem := s.Save("door", frame(t, 1), nil); name != "" || problem != "" {
		t.Errorf("save on an off store: %q %q", name, problem)
	}
}
