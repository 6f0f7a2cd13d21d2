package mqttlink_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// Publish reaches the broker once connected and returns after its acknowledgement;
// between sessions it says so at once instead of queueing.
func TestPublishWaitsForTheBroker(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	sub := b.Subscribe(t, "cloud", "vigil/"+device+"/samples/#")
	l := startLink(t, newOutbox(t), mqttlink.Options{Brokers: []string{b.URL}})
	testkit.WaitFor(t, 10*time.Second, "the link to connect", func() bool { return l.State().State == mqttlink.StateConnected })

	payload := bytes.Repeat([]byte{0xFF, 0xD8, 0x00}, 5000)
	if err := l.Publish(context.Background(), "samples/a.jpg/0", payload, 1); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	testkit.WaitFor(t, 10*time.Second, "the message at the subscriber", func() bool {
		for _, m := range sub.Messages() {
			if m.Topic == "vigil/"+device+"/samples/a.jpg/0" && bytes.Equal(m.Payload, payload) && !m.Retained {
				return true
			}
		}
		return false
	})

	b.Stop()
	testkit.WaitFor(t, 10*time.Second, "the link to notice the outage", func() bool { return l.State().State != mqttlink.StateConnected })
	// The session has ended (its client is gone) before the state leaves connected.
	if err := l.Publish(context.Background(), "samples/b.jpg/0", payload, 1); !errors.Is(err, mqttlink.ErrNotConnected) {
		t.Fatalf("Publish with the broker down: %v, want ErrNotConnected", err)
	}
}
