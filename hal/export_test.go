package hal

import "time"

// RetryingAt is Retrying on an injected clock, for tests of the once-a-second limit.
func RetryingAt(driver string, open func() (Line, error), now func() time.Time) Line {
	return &retryingLine{opener: opener[Line]{driver: driver, open: open, now: now}}
}

// RetryInterval is how often a failing line is retried.
const RetryInterval = retryInterval

// Fault returns the error of the last failed drive, or nil while the line works.
func (o *Output) Fault() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lastErr
}
