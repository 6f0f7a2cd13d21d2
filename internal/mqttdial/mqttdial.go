// Package mqttdial connects the operator's commands (vigil model push, vigil fleet
// status, vigil samples receive) to the devices' broker: one set of broker settings
// (Broker), one connect sequence (Connect: connect, subscribe, wait for every SUBACK,
// each bounded), one way to name the broker in an error (its password masked). The
// devices' own link, sync/mqttlink, is persistent and supervised and dials by itself;
// it shares only Wait. sync/deploy/push, sync/fleet and sync/upload connect through
// it; sync/mqttlink and internal/mqttbarrier use Wait.
package mqttdial

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/internal/redact"
)

// DefaultTimeout bounds a connect, and each subscribe, when Broker.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// keepAlive is the MQTT keep-alive of every operator connection.
const keepAlive = 30 * time.Second

// Broker is how an operator command reaches the devices' broker.
type Broker struct {
	URL      string // tcp://, ssl://, ws://, wss://
	Username string
	Password string
	TLS      *tls.Config // for ssl:// and wss://; nil means the system's roots
	ClientID string
	Timeout  time.Duration // a connect, and each subscribe; DefaultTimeout when 0
}

func (b Broker) timeout() time.Duration {
	if b.Timeout <= 0 {
		return DefaultTimeout
	}
	return b.Timeout
}

// Name is the broker's URL for messages and logs, its password masked.
func (b Broker) Name() string { return redact.URL(b.URL) }

// ClientOptions returns paho options for b: the broker, client id, user and
// password, TLS, connect timeout and keep-alive. The caller adds what its session
// needs (clean session, reconnects, ordering, handlers) and passes them to Connect.
func (b Broker) ClientOptions() *paho.ClientOptions {
	o := paho.NewClientOptions().AddBroker(b.URL).SetClientID(b.ClientID).
		SetUsername(b.Username).SetPassword(b.Password).
		SetConnectTimeout(b.timeout()).SetKeepAlive(keepAlive)
	if b.TLS != nil {
		o.SetTLSConfig(b.TLS)
	}
	return o
}

// Subscription is a topic filter and the handler of its messages, subscribed at QoS 1.
type Subscription struct {
	Filter  string
	Handler paho.MessageHandler
}

// Connect makes a client from o (b.ClientOptions and the caller's additions),
// connects it and subscribes to subs in order, waiting for the CONNACK and each
// SUBACK at most b's timeout, or until ctx ends. On any failure the client is
// disconnected and the error names the broker, its password masked.
func Connect(ctx context.Context, b Broker, o *paho.ClientOptions, subs ...Subscription) (paho.Client, error) {
	c := paho.NewClient(o)
	if err := Wait(ctx, c.Connect(), b.timeout()); err != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("connect to %s: %w", b.Name(), err)
	}
	if err := Subscribe(ctx, b, c, subs...); err != nil {
		c.Disconnect(0)
		return nil, err
	}
	return c, nil
}

// Subscribe subscribes c to subs in order at QoS 1, waiting for each SUBACK at most
// b's timeout; a SUBACK that refuses (0x80: an ACL, say) is an error. Sessions call it
// again after paho reconnects them.
func Subscribe(ctx context.Context, b Broker, c paho.Client, subs ...Subscription) error {
	for _, s := range subs {
		tok := c.Subscribe(s.Filter, 1, s.Handler)
		err := Wait(ctx, tok, b.timeout())
		if st, ok := tok.(*paho.SubscribeToken); err == nil && ok {
			// A SUBACK's failure code is not an error to paho.
			for _, q := range st.Result() {
				if q == 0x80 {
					err = fmt.Errorf("refused by the broker (ACL?)")
				}
			}
		}
		if err != nil {
			return fmt.Errorf("subscribe %s on %s: %w", s.Filter, b.Name(), err)
		}
	}
	return nil
}

// Wait waits for tok at most timeout, or until ctx ends, and returns its error. It is
// the one token wait of the tree: the device's link and the barrier use it too.
func Wait(ctx context.Context, tok paho.Token, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("no answer from the broker in %v", timeout)
	}
}
