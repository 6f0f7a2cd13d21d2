// Package mqttbarrier tells an operator tool when the retained messages of its
// subscriptions have all arrived, without sleeping: a broker answers one client's
// packets in order, so a message the client publishes to a topic it subscribed to
// after the others comes back after their retained messages. `vigil fleet status`
// and `vigil model push` use it.
package mqttbarrier

import (
	"context"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/internal/mqttdial"
)

// Wait subscribes to topic (a topic of the caller's own, e.g. <prefix>/<tool>/<client
// id>/barrier), publishes to it and waits for the echo, then unsubscribes. Call it after
// the subscriptions' SUBACKs. A broker whose ACLs keep the client from topic never
// echoes; after timeout the retained messages have long arrived, so Wait returns nil
// then too. It returns an error only when the broker refused the subscribe or publish,
// did not answer, or ctx ended. paho must deliver messages in order (its default,
// OrderMatters).
func Wait(ctx context.Context, c paho.Client, topic string, timeout time.Duration) error {
	back := make(chan struct{}, 1)
	tok := c.Subscribe(topic, 1, func(paho.Client, paho.Message) {
		select {
		case back <- struct{}{}:
		default:
		}
	})
	if err := mqttdial.Wait(ctx, tok, timeout); err != nil {
		return fmt.Errorf("subscribe %s: %w", topic, err)
	}
	defer c.Unsubscribe(topic)
	if err := mqttdial.Wait(ctx, c.Publish(topic, 1, false, []byte("sync")), timeout); err != nil {
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-back:
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}
