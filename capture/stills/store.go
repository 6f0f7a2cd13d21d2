// Package stills keeps frames as JPEG images: a camera's live view for the status page
// (Live), and frames kept on disk within a byte budget, oldest out first (Store): the
// frames that made rules fire, with their matches drawn, and samples for retraining, as
// captured, each with a JSON sidecar.
package stills

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/infer"
)

// Store keeps frames as JPEG files in one directory, within a byte budget: the oldest
// files go first. An event names its file; the agent serves it.
type Store struct {
	dir      string
	maxBytes int64 // 0: the store is off
	// clean keeps frames as captured, without boxes (training samples).
	clean  bool
	logger *slog.Logger
	// saved receives a token when a file is saved (the samples' uploader waits on it);
	// a token already waiting is enough, so saving never blocks on it.
	saved chan struct{}

	mu    sync.Mutex // guards the fields below
	files []snapFile // oldest first
	bytes int64
	init  bool
}

type snapFile struct {
	name string
	size int64
}

// NewStore keeps frames in dir within maxBytes (0: nothing is kept). Frames are saved
// with their matches drawn, or as captured when clean is set.
func NewStore(dir string, maxBytes int64, clean bool, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Store{dir: dir, maxBytes: maxBytes, clean: clean, logger: logger.With("component", "stills", "dir", dir), saved: make(chan struct{}, 1)}
}

// Dir is the directory it keeps its files in.
func (s *Store) Dir() string { return s.dir }

// Saved receives a token when a file is saved (a token already waiting is enough).
func (s *Store) Saved() <-chan struct{} { return s.saved }

// List returns the stored files (NAME.jpg), oldest first, including what an earlier
// run left.
func (s *Store) List() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.maxBytes == 0 || s.loadLocked() != nil {
		return nil
	}
	names := make([]string, len(s.files))
	for i, f := range s.files {
		names[i] = f.name
	}
	return names
}

// Usage is how many files are stored and their bytes (sidecars included).
func (s *Store) Usage() (files int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files), s.bytes
}

// Save writes the frame with the matches drawn and returns the file's name, or the
// reason it could not (a full disk must not stop the event).
func (s *Store) Save(camera string, f capture.Frame, matches []infer.Detection) (name, problem string) {
	return s.SaveWith(camera, f, matches, nil)
}

// SaveWith is Save with a JSON sidecar (NAME.json beside NAME.jpg) when sidecar is set;
// the pair counts against the budget and goes together.
func (s *Store) SaveWith(camera string, f capture.Frame, matches []infer.Detection, sidecar []byte) (name, problem string) {
	if s.maxBytes == 0 {
		return "", ""
	}
	img := f.Mat.Clone() // the frame is drawn on again for the live snapshot
	defer img.Close()
	if !s.clean {
		Draw(&img, matches)
	}
	buf, err := gocv.IMEncodeWithParams(gocv.JPEGFileExt, img, []int{gocv.IMWriteJpegQuality, 85})
	if err != nil {
		return "", "encode: " + err.Error()
	}
	defer buf.Close()
	data := buf.GetBytes()
	if len(data) == 0 {
		return "", "encode: OpenCV produced no JPEG"
	}
	name = fmt.Sprintf("%s-%s-%d.jpg", camera, f.Time.UTC().Format("20060102T150405.000Z"), f.Seq)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.loadLocked(); err != nil {
		return "", err.Error()
	}
	tmp := filepath.Join(s.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o640); err != nil {
		os.Remove(tmp)
		s.logger.Error("frame not saved", "file", name, "err", err)
		return "", "write: " + err.Error()
	}
	size := int64(len(data))
	if sidecar != nil {
		// The sidecar first: a sample is never on disk without what it shows.
		side := filepath.Join(s.dir, strings.TrimSuffix(name, ".jpg")+".json")
		if err := os.WriteFile(side, sidecar, 0o640); err != nil {
			os.Remove(tmp)
			return "", "write: " + err.Error()
		}
		size += int64(len(sidecar))
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		os.Remove(tmp)
		return "", "write: " + err.Error()
	}
	s.files = append(s.files, snapFile{name: name, size: size})
	s.bytes += size
	for s.bytes > s.maxBytes && len(s.files) > 1 {
		old := s.files[0]
		if err := os.Remove(filepath.Join(s.dir, old.name)); err != nil && !os.IsNotExist(err) {
			s.logger.Warn("old frame not removed", "file", old.name, "err", err)
		}
		os.Remove(filepath.Join(s.dir, strings.TrimSuffix(old.name, ".jpg")+".json"))
		s.files = s.files[1:]
		s.bytes -= old.size
	}
	select {
	case s.saved <- struct{}{}:
	default:
	}
	return name, ""
}

// loadLocked creates the directory and lists what an earlier run left, once.
func (s *Store) loadLocked() error {
	if s.init {
		return nil
	}
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return fmt.Errorf("create snapshot directory: %w", err)
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	type aged struct {
		snapFile
		mod time.Time
	}
	var found []aged
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".jpg") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		size := info.Size()
		if side, err := os.Stat(filepath.Join(s.dir, strings.TrimSuffix(e.Name(), ".jpg")+".json")); err == nil {
			size += side.Size()
		}
		found = append(found, aged{snapFile{e.Name(), size}, info.ModTime()})
	}
	slices.SortFunc(found, func(a, b aged) int { return a.mod.Compare(b.mod) })
	for _, f := range found {
		s.files = append(s.files, f.snapFile)
		s.bytes += f.size
	}
	s.init = true
	return nil
}

// Path returns the file of a stored name (or of its .json sidecar), or "" when the name is not a snapshot.
func (s *Store) Path(name string) string {
	if name != filepath.Base(name) || !(strings.HasSuffix(name, ".jpg") || strings.HasSuffix(name, ".json")) || strings.HasPrefix(name, ".") {
		return ""
	}
	return filepath.Join(s.dir, name)
}
