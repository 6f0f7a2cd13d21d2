package capture

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/vigil-edge/vigil/internal/backoff"
	"github.com/vigil-edge/vigil/internal/rate"
)

// Camera states, as shown in /api/status.
const (
	StateConnecting = "connecting"
	StateStreaming  = "streaming"
	StateStalled    = "stalled"
	StateBackoff    = "backoff"
	StateStopped    = "stopped"
)

// CameraOptions configure a Camera.
type CameraOptions struct {
	Name string
	// Open opens the source; it is called again after every failure.
	Open         func(ctx context.Context) (Source, error)
	StallTimeout time.Duration
	BackoffMin   time.Duration
	BackoffMax   time.Duration
	// Lossless waits for each frame to be taken instead of replacing it: for files
	// read as fast as they decode, where detection sets the pace and every frame counts.
	Lossless bool
	Logger   *slog.Logger
	// OnState, if set, is told when the camera starts streaming, fails (backoff) or
	// ends (a file played once), once per change: a dead camera retried forever is
	// one change, not one per retry. It is called from the camera's goroutine.
	OnState func(name, state, lastErr string)
}

// Status is what the status page and metrics show of a camera.
type Status struct {
	Name          string  `json:"name"`
	State         string  `json:"state"`
	FPS           float64 `json:"fps"`
	Frames        uint64  `json:"frames"`
	Dropped       uint64  `json:"dropped"`
	Reconnects    uint64  `json:"reconnects"`
	LastError     string  `json:"last_error"`
	LastFrameAgeS float64 `json:"last_frame_age_s"`
	NextRetry     string  `json:"next_retry,omitempty"`
}

// Camera reads one source into its Slot and keeps it going: a failed open or read is
// retried with capped exponential backoff and jitter, forever, until ctx ends.
type Camera struct {
	opts     CameraOptions
	slot     *Slot
	logger   *slog.Logger
	notified string // the last state told to OnState; used by Run's goroutine only

	mu         sync.Mutex // guards the fields below
	state      string
	frames     uint64
	reconnects uint64
	lastErr    string
	nextRetry  time.Time
	rate       rate.Meter // frames
}

// NewCamera returns a camera in state connecting; Run starts it.
func NewCamera(opts CameraOptions) *Camera {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Camera{
		opts: opts, slot: NewSlot(), state: StateConnecting,
		logger: logger.With("component", "capture", "camera", opts.Name),
	}
}

// Name is the camera's name.
func (c *Camera) Name() string { return c.opts.Name }

// Slot is where the newest frame waits.
func (c *Camera) Slot() *Slot { return c.slot }

// Run reads frames until ctx ends, then closes the slot and returns nil.
func (c *Camera) Run(ctx context.Context) error {
	defer c.slot.Close()
	failures := 0
	for {
		c.setState(StateConnecting)
		err := c.stream(ctx, &failures)
		if ctx.Err() != nil {
			c.setState(StateStopped)
			return nil
		}
		if errors.Is(err, io.EOF) {
			// A file played once has ended: nothing to retry. A lossless camera hands
			// over its last frame before the slot closes.
			if c.opts.Lossless {
				c.slot.Drain(ctx)
			}
			c.mu.Lock()
			c.state, c.lastErr = StateStopped, "end of file"
			c.mu.Unlock()
			c.logger.Info("camera source ended")
			c.notify(StateStopped, "end of file")
			return nil
		}
		delay := backoff.Delay(c.opts.BackoffMin, c.opts.BackoffMax, failures)
		failures++
		c.mu.Lock()
		c.reconnects++
		c.lastErr = err.Error()
		c.nextRetry = time.Now().Add(delay)
		c.state = StateBackoff
		c.mu.Unlock()
		c.logger.Warn("camera failed; retrying", "err", err, "attempt", failures, "retry_in", delay.Round(time.Millisecond))
		c.notify(StateBackoff, err.Error())
		if sleepCtx(ctx, delay) != nil {
			c.setState(StateStopped)
			return nil
		}
	}
}

// stream opens the source and reads it until it fails. failures is reset once a
// frame arrives, so a camera that worked for a while retries quickly.
func (c *Camera) stream(ctx context.Context, failures *int) error {
	src, err := c.opts.Open(ctx)
	if err != nil {
		return err
	}
	defer src.Close()
	var seq uint64
	for {
		m, err := src.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		now := time.Now()
		c.mu.Lock()
		started := c.state != StateStreaming
		if started {
			c.state, c.lastErr = StateStreaming, ""
			*failures = 0
			c.logger.Info("camera streaming")
		}
		c.frames++
		seq = c.frames
		c.rate.Tick(now)
		c.mu.Unlock()
		if started {
			c.notify(StateStreaming, "")
		}
		f := Frame{Camera: c.opts.Name, Seq: seq, Time: now, Mat: m}
		if !c.opts.Lossless {
			c.slot.Put(f)
		} else if err := c.slot.PutWait(ctx, f); err != nil {
			return err
		}
	}
}

// notify tells OnState about a change of the reported state. Only the camera's own
// goroutine calls it, so notified needs no lock.
func (c *Camera) notify(state, lastErr string) {
	if state == c.notified {
		return
	}
	c.notified = state
	if c.opts.OnState != nil {
		c.opts.OnState(c.opts.Name, state, lastErr)
	}
}

func (c *Camera) setState(s string) {
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
}

// Status reports the camera's state and counters. A streaming camera that has not
// delivered a frame within its stall timeout is reported stalled.
func (c *Camera) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{
		Name: c.opts.Name, State: c.state, Frames: c.frames, Dropped: c.slot.Dropped(),
		Reconnects: c.reconnects, LastError: c.lastErr,
	}
	last := c.rate.Last()
	if !last.IsZero() {
		s.LastFrameAgeS = math.Round(time.Since(last).Seconds()*1000) / 1000
	}
	if s.State == StateStreaming {
		s.FPS = math.Round(100*c.rate.PerSecond()) / 100
	}
	if s.State == StateStreaming && c.opts.StallTimeout > 0 && time.Since(last) > c.opts.StallTimeout {
		s.State, s.FPS = StateStalled, 0
	}
	if s.State == StateBackoff {
		s.NextRetry = c.nextRetry.UTC().Format(time.RFC3339Nano)
	}
	return s
}
