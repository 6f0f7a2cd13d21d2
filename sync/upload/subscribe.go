package upload

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// DefaultClientID is the receiver's MQTT client id: fixed, so its session (and the
// samples the broker queues for it while it is down) is found again at the next start.
const DefaultClientID = "vigil-samples-receiver"

// subscribeTimeout bounds a connect or a subscribe.
const subscribeTimeout = 30 * time.Second

// SubscribeOptions configure the MQTT receiving side.
type SubscribeOptions struct {
	Broker             string
	ClientID           string // DefaultClientID when empty
	Username, Password string
	TLS                *tls.Config // nil: the system's roots for ssl:// and wss://
	Prefix             string      // mqtt.topic_prefix of the devices; "vigil" when empty
	Logger             *slog.Logger
	// Subscribed, when set, is called once the first subscription is acknowledged:
	// from then on the broker keeps the samples for this client id.
	Subscribed func(filter string)
}

// Subscribe receives every device's samples from the broker until ctx ends: it
// subscribes to <prefix>/+/samples/# at QoS 1 with a persistent session (clean
// session off, a fixed client id), so the broker keeps what is published while the
// receiver is away, and feeds each message to r. got is called, one message at a
// time and in order, with each completed file or each error; the message is
// acknowledged to the broker only when got returns, so a file got saved is never
// acknowledged unsaved. It returns an error when the first connection or subscription
// fails; later losses are reconnected (and logged) by themselves.
func Subscribe(ctx context.Context, opts SubscribeOptions, r *Receiver, got func(*File, error)) error {
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.Prefix == "" {
		opts.Prefix = "vigil"
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "samples receiver")
	filter := opts.Prefix + "/+/samples/#"
	handle := func(_ paho.Client, m paho.Message) {
		f, err := r.Add(m.Topic(), m.Payload())
		if f != nil || err != nil {
			got(f, err)
		}
	}
	var connected atomic.Bool
	o := paho.NewClientOptions().AddBroker(opts.Broker).SetClientID(opts.ClientID).
		SetUsername(opts.Username).SetPassword(opts.Password).
		SetCleanSession(false).SetConnectTimeout(subscribeTimeout).SetKeepAlive(30 * time.Second).
		SetOrderMatters(true). // a file's chunks in order, and acknowledged after got
		// What the broker queued for the session comes as soon as it connects, before a
		// subscription's handler is set: the same handler takes it.
		SetDefaultPublishHandler(handle).
		SetAutoReconnect(true).SetMaxReconnectInterval(10 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			logger.Warn("broker connection lost; reconnecting", "broker", redactURL(opts.Broker), "err", err)
		}).
		SetOnConnectHandler(func(c paho.Client) {
			if connected.Swap(true) {
				// The broker may have lost the session: subscribe again.
				if err := subscribe(c, filter, handle); err != nil {
					logger.Error("subscribe after reconnect failed", "err", err)
					return
				}
				logger.Info("reconnected", "broker", redactURL(opts.Broker))
			}
		})
	if opts.TLS != nil {
		o.SetTLSConfig(opts.TLS)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(subscribeTimeout) {
		c.Disconnect(0)
		return fmt.Errorf("connect to %s: no answer in %v", redactURL(opts.Broker), subscribeTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("connect to %s: %w", redactURL(opts.Broker), err)
	}
	defer c.Disconnect(250)
	if err := subscribe(c, filter, handle); err != nil {
		return fmt.Errorf("%s: %w", redactURL(opts.Broker), err)
	}
	if opts.Subscribed != nil {
		opts.Subscribed(filter)
	}
	<-ctx.Done()
	return nil
}

func subscribe(c paho.Client, filter string, h paho.MessageHandler) error {
	tok := c.Subscribe(filter, 1, h)
	if !tok.WaitTimeout(subscribeTimeout) {
		return fmt.Errorf("subscribe %s: no answer in %v", filter, subscribeTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	// A SUBACK's failure code (0x80) is not an error to paho.
	if st, ok := tok.(*paho.SubscribeToken); ok {
		for _, q := range st.Result() {
			if q == 0x80 {
				return errors.New("subscribe " + filter + ": refused by the broker (ACL?)")
			}
		}
	}
	return nil
}

// redactURL hides a password in a broker URL.
func redactURL(broker string) string {
	if i := strings.Index(broker, "@"); i >= 0 {
		if j := strings.Index(broker, "://"); j >= 0 && j < i {
			return broker[:j+3] + "xxxxx" + broker[i:]
		}
	}
	return broker
}
