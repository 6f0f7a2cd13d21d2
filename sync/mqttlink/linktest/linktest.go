// Package linktest runs a real mqttlink.Link for tests of the packages that talk to
// devices (fleet status, sample uploads and their receiver): a device's link on an
// outbox of its own, without an agent around it.
package linktest

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/outbox"
)

// Start runs a link with opts (Brokers and Device set by the caller; a zero backoff
// becomes 20-200 ms) on an outbox in a temporary directory, until stop is called or
// the test ends. stop waits for the link's Run to return (a clean stop: the offline
// status is published) and closes the outbox; calling it again does nothing.
func Start(t testing.TB, opts mqttlink.Options) (l *mqttlink.Link, stop func()) {
	t.Helper()
	if opts.BackoffMin == 0 {
		opts.BackoffMin, opts.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	}
	ob, err := outbox.Open(outbox.Options{Path: filepath.Join(t.TempDir(), "outbox"), Device: opts.Device, MaxBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	l, err = mqttlink.New(ob, opts)
	if err != nil {
		ob.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; ob.Close() }) }
	t.Cleanup(stop)
	return l, stop
}
