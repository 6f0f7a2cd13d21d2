package capture

import (
	"context"
	"errors"
	"sync"
	"time"

	"gocv.io/x/gocv"
)

// Frame is one decoded image and where and when it came from.
type Frame struct {
	Camera string
	// Seq counts frames read from this camera since the agent started, from 1.
	Seq uint64
	// Time is when the frame was read, with the monotonic clock; latencies are
	// measured from it.
	Time time.Time
	// Mat is the image, 8-bit BGR. The Frame's holder closes it.
	Mat gocv.Mat
}

// Close releases the image.
func (f *Frame) Close() {
	if f.Mat.Ptr() != nil {
		f.Mat.Close()
	}
}

// ErrClosed is returned by Take once the slot is closed.
var ErrClosed = errors.New("capture: slot closed")

// Slot holds the newest frame of one camera. Put never blocks: a frame nobody took
// is replaced, closed and counted as dropped.
type Slot struct {
	ready chan struct{} // has a token while a frame is waiting
	taken chan struct{} // has a token after a Take emptied the slot

	mu      sync.Mutex // guards the fields below
	frame   Frame
	full    bool
	closed  bool
	dropped uint64
}

// NewSlot returns an empty slot.
func NewSlot() *Slot {
	return &Slot{ready: make(chan struct{}, 1), taken: make(chan struct{}, 1)}
}

// Put stores f, taking ownership of it. The frame it replaces is closed and counted.
func (s *Slot) Put(f Frame) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		f.Close()
		return
	}
	old, hadOld := s.frame, s.full
	s.frame, s.full = f, true
	if hadOld {
		s.dropped++
	}
	s.mu.Unlock()
	if hadOld {
		old.Close() // outside the lock: cgo
	}
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// PutWait stores f once the slot is empty, so no frame is dropped: for sources read as
// fast as they decode, where the consumer sets the pace. It takes ownership of f even
// when ctx ends first (then f is closed).
func (s *Slot) PutWait(ctx context.Context, f Frame) error {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			f.Close()
			return ErrClosed
		}
		if !s.full {
			s.frame, s.full = f, true
			s.mu.Unlock()
			select {
			case s.ready <- struct{}{}:
			default:
			}
			return nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			f.Close()
			return ctx.Err()
		case <-s.taken:
		}
	}
}

// Drain waits until the waiting frame, if any, has been taken.
func (s *Slot) Drain(ctx context.Context) error {
	for {
		s.mu.Lock()
		empty := !s.full || s.closed
		s.mu.Unlock()
		if empty {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.taken:
		}
	}
}

// Take waits for a frame newer than the last one taken and hands it to the caller.
func (s *Slot) Take(ctx context.Context) (Frame, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return Frame{}, ErrClosed
		}
		if s.full {
			f := s.frame
			s.frame, s.full = Frame{}, false
			s.mu.Unlock()
			select {
			case s.taken <- struct{}{}:
			default:
			}
			return f, nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return Frame{}, ctx.Err()
		case <-s.ready:
		}
	}
}

// Dropped counts frames replaced before anyone took them.
func (s *Slot) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Close closes the waiting frame, if any, and makes Take return ErrClosed.
func (s *Slot) Close() {
	s.mu.Lock()
	f, full := s.frame, s.full
	s.frame, s.full, s.closed = Frame{}, false, true
	s.mu.Unlock()
	if full {
		f.Close()
	}
	for _, ch := range []chan struct{}{s.ready, s.taken} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
