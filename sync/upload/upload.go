package upload

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vigil-edge/vigil/internal/backoff"
)

// StateFile is the file in the samples directory that lists the samples already sent.
const StateFile = ".uploaded"

// DefaultRecheck is how often an idle uploader looks at its target again, so a reload
// that turns uploading on applies without waiting for the next sample.
const DefaultRecheck = 10 * time.Second

// Target is where samples go now.
type Target struct {
	Sender                 Sender // nil: uploading is off
	BackoffMin, BackoffMax time.Duration
}

// Options configure an Uploader.
type Options struct {
	// Dir holds the samples: NAME.jpg with its sidecar NAME.json.
	Dir string
	// List returns the samples in Dir (their .jpg names), oldest first.
	List func() []string
	// Notify receives a token when a sample is added.
	Notify <-chan struct{}
	// Target is read before every pass, so a config reload applies.
	Target func() Target
	// Recheck is how often an idle uploader reads Target again; 0 means DefaultRecheck.
	Recheck time.Duration
	Logger  *slog.Logger
}

// Stats are the uploader's figures since it started.
type Stats struct {
	Uploaded  uint64 `json:"uploaded"` // samples sent
	Pending   int    `json:"pending"`  // samples waiting to be sent
	Skipped   uint64 `json:"skipped"`  // removed by the budget before they could be sent
	Failed    uint64 `json:"failed"`   // attempts that failed (each retried)
	LastError string `json:"last_error,omitempty"`
}

// Uploader sends the samples of a directory, oldest first, each once.
type Uploader struct {
	opts   Options
	logger *slog.Logger

	// Owned by Run's goroutine.
	done     map[string]bool // samples sent (as in the state file) or given up as gone
	lines    int             // names in the state file, compacted when far above len(done)
	waiting  map[string]bool // samples pending at the last pass, to see the budget remove one
	sentPart map[string]bool // files of partOf already sent (the .jpg when its .json failed)
	partOf   string

	mu    sync.Mutex // guards stats
	stats Stats
}

// New returns an uploader; Run runs it.
func New(opts Options) *Uploader {
	if opts.Recheck <= 0 {
		opts.Recheck = DefaultRecheck
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Uploader{
		opts: opts, logger: opts.Logger.With("component", "samples upload"),
		done: map[string]bool{}, waiting: map[string]bool{}, sentPart: map[string]bool{},
	}
}

// Stats returns the uploader's figures.
func (u *Uploader) Stats() Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.stats
}

func (u *Uploader) update(f func(s *Stats)) {
	u.mu.Lock()
	f(&u.stats)
	u.mu.Unlock()
}

// errGone is a sample whose files were removed (by the budget) before they were read.
var errGone = errors.New("sample removed before it was sent")

// Run uploads until ctx ends. Failures are retried with backoff; it returns nil on
// shutdown.
func (u *Uploader) Run(ctx context.Context) error {
	u.load()
	failures := 0
	var last Sender
	defer func() {
		// No connection of an HTTP sender outlives the uploader.
		if c, ok := last.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}()
	for {
		t := u.opts.Target()
		if t.Sender != last {
			if c, ok := last.(interface{ CloseIdleConnections() }); ok {
				c.CloseIdleConnections()
			}
			last = t.Sender
		}
		wait, wake := u.opts.Recheck, u.opts.Notify
		if t.Sender == nil {
			u.account(u.opts.List(), false)
		} else {
			sent, err := u.pass(ctx, t.Sender)
			if ctx.Err() != nil {
				return nil
			}
			if sent > 0 {
				failures = 0
			}
			if err != nil {
				// Retried after the delay, not at the next sample: a destination that
				// is down is not asked again every time a frame is kept.
				wait, wake = backoff.Delay(t.BackoffMin, t.BackoffMax, failures), nil
				failures++
				u.logger.Warn("sample upload failed; retrying", "err", err, "attempt", failures, "retry_in", wait.Round(time.Millisecond))
			} else {
				failures = 0
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// pass sends every pending sample, oldest first, until one fails.
func (u *Uploader) pass(ctx context.Context, s Sender) (sent int, err error) {
	names := u.account(u.opts.List(), true)
	for _, name := range names {
		if u.done[name] {
			continue
		}
		err := u.send(ctx, s, name)
		if errors.Is(err, errGone) {
			u.done[name] = true // in memory only: it is not in the directory any more
			delete(u.waiting, name)
			u.update(func(s *Stats) { s.Skipped++; s.Pending-- })
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				u.update(func(s *Stats) { s.Failed++; s.LastError = err.Error() })
			}
			return sent, err
		}
		sent++
		delete(u.waiting, name)
		u.done[name] = true
		if err := u.record(name); err != nil {
			// It was sent; this run will not send it again, but a restart would.
			u.logger.Error("uploaded sample not recorded; a restart will send it again", "file", name, "err", err)
		}
		u.update(func(s *Stats) { s.Uploaded++; s.Pending--; s.LastError = "" })
		u.logger.Debug("sample uploaded", "file", name)
	}
	return sent, nil
}

// send sends a sample's JPEG, then its sidecar. Both are read first, so a sample the
// budget removes meanwhile is either sent whole or not at all.
func (u *Uploader) send(ctx context.Context, s Sender, name string) error {
	if u.partOf != name {
		clear(u.sentPart)
		u.partOf = name
	}
	files := []string{name, strings.TrimSuffix(name, ".jpg") + ".json"}
	data := make([][]byte, len(files))
	for i, f := range files {
		b, err := os.ReadFile(filepath.Join(u.opts.Dir, f))
		if errors.Is(err, fs.ErrNotExist) {
			return errGone
		}
		if err != nil {
			return fmt.Errorf("read sample %s: %w", f, err)
		}
		data[i] = b
	}
	for i, f := range files {
		if u.sentPart[f] {
			continue
		}
		if err := s.Send(ctx, f, data[i]); err != nil {
			return err
		}
		u.sentPart[f] = true
	}
	clear(u.sentPart)
	return nil
}

// account compares the listed samples with those pending at the last pass: one no
// longer listed and never sent was removed by the budget (counted when tracking). It
// forgets sent samples that are gone and returns names.
func (u *Uploader) account(names []string, tracking bool) []string {
	listed := make(map[string]bool, len(names))
	for _, n := range names {
		listed[n] = true
	}
	var skipped uint64
	for n := range u.waiting {
		if !listed[n] {
			skipped++
		}
	}
	clear(u.waiting)
	for n := range u.done {
		if !listed[n] {
			delete(u.done, n)
		}
	}
	for _, n := range names {
		if !u.done[n] && tracking {
			u.waiting[n] = true
		}
	}
	pending := 0
	for _, n := range names {
		if !u.done[n] {
			pending++
		}
	}
	if !tracking {
		skipped = 0
	}
	u.update(func(s *Stats) { s.Pending = pending; s.Skipped += skipped })
	if u.lines > 2*len(u.done)+64 {
		u.compact()
	}
	return names
}

// load reads the state file. A missing one means nothing was sent yet; an unreadable
// one is logged, and its samples are sent again.
func (u *Uploader) load() {
	data, err := os.ReadFile(filepath.Join(u.opts.Dir, StateFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			u.logger.Error("upload state unreadable; samples already sent will be sent again", "err", err)
		}
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// A line torn by a crash matches no sample: that one is sent again.
		if name := strings.TrimSpace(sc.Text()); name != "" {
			u.done[name] = true
			u.lines++
		}
	}
}

// record appends a sent sample to the state file and syncs it.
func (u *Uploader) record(name string) error {
	f, err := os.OpenFile(filepath.Join(u.opts.Dir, StateFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	_, err = f.WriteString(name + "\n")
	if err == nil {
		err = f.Sync()
	}
	u.lines++
	return errors.Join(err, f.Close())
}

// compact rewrites the state file with the sent samples still in the directory.
func (u *Uploader) compact() {
	var b strings.Builder
	for n := range u.done {
		b.WriteString(n + "\n")
	}
	path := filepath.Join(u.opts.Dir, StateFile)
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, []byte(b.String()), 0o640)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		u.logger.Warn("upload state not compacted", "err", err)
		return
	}
	u.lines = len(u.done)
}
