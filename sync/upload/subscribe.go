package upload

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/internal/mqttdial"
)

// DefaultClientID is the receiver's MQTT client id: fixed, so its session (and the
// samples the broker queues for it while it is down) is found again at the next start.
const DefaultClientID = "vigil-samples-receiver"

// DefaultRetryDelay is how long Subscribe waits, after a message that could not be
// stored, before it connects again to have it sent again.
const DefaultRetryDelay = 10 * time.Second

// SubscribeOptions configure the MQTT receiving side.
type SubscribeOptions struct {
	// Broker is where the devices publish; its ClientID defaults to DefaultClientID,
	// its Timeout (a connect, each subscribe) to 30s.
	Broker mqttdial.Broker
	Prefix string // mqtt.topic_prefix of the devices; "vigil" when empty
	Logger *slog.Logger
	// Subscribed, when set, is called once the first subscription is acknowledged:
	// from then on the broker keeps the samples for this client id.
	Subscribed func(filter string)
	// RetryDelay: after a message that could not be stored, how long to wait before
	// connecting again (DefaultRetryDelay).
	RetryDelay time.Duration
}

// Subscribe receives every device's samples from the broker until ctx ends: it
// subscribes to <prefix>/+/samples/# at QoS 1 with a persistent session (clean
// session off, a fixed client id), so the broker keeps what is published while the
// receiver is away, and feeds each message to r. got is called, one message at a
// time and in order, with each completed file or each error. A message is
// acknowledged to the broker only once what it carries is kept: a chunk once r has
// it (in its spool, when it has one), a manifest once got has saved its file and
// returned nil (then r.Saved is called). When got returns an error for a file, or
// r could not store a chunk (ErrNotStored), that message and those after it are not
// acknowledged: Subscribe disconnects, waits RetryDelay and connects again, and the
// broker delivers them again (with a spool, the file's chunks are still there).
// It returns an error when the first connection or subscription fails; later losses
// are reconnected (and logged) by themselves.
func Subscribe(ctx context.Context, opts SubscribeOptions, r *Receiver, got func(*File, error) error) error {
	if opts.Broker.ClientID == "" {
		opts.Broker.ClientID = DefaultClientID
	}
	if opts.Prefix == "" {
		opts.Prefix = "vigil"
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = DefaultRetryDelay
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "samples receiver")
	filter := opts.Prefix + "/+/samples/#"
	for first := true; ; first = false {
		stalled := make(chan error, 1)
		c, err := connectReceiver(ctx, opts, filter, logger, r, got, stalled)
		if err != nil {
			if first {
				return err
			}
			logger.Error("reconnect failed", "err", err)
		} else {
			if first && opts.Subscribed != nil {
				opts.Subscribed(filter)
			}
			if !first {
				logger.Info("connected again to receive what was not stored", "broker", opts.Broker.Name())
			}
			select {
			case <-ctx.Done():
				c.Disconnect(250)
				return nil
			case err := <-stalled:
				// Unacknowledged, the message stays with the broker for the session.
				c.Disconnect(0)
				logger.Error("a message could not be stored; not acknowledged, the broker will send it again", "err", err, "retry", opts.RetryDelay)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(opts.RetryDelay):
		}
	}
}

// connectReceiver connects a client with the persistent session and subscribes.
// Its handler acknowledges each message itself; on the first message that cannot be
// stored it sends the reason on stalled and acknowledges nothing more.
func connectReceiver(ctx context.Context, opts SubscribeOptions, filter string, logger *slog.Logger, r *Receiver, got func(*File, error) error, stalled chan<- error) (paho.Client, error) {
	var stop atomic.Bool
	handle := func(_ paho.Client, m paho.Message) {
		if stop.Load() {
			return // not acknowledged: it comes again after the reconnect
		}
		f, err := r.Add(m.Topic(), m.Payload())
		switch {
		case f != nil:
			err = got(f, nil)
			if err == nil {
				r.Saved(f)
			}
		case err != nil:
			got(nil, err)
			if !errors.Is(err, ErrNotStored) {
				err = nil // the message's own fault: sending it again would not help
			}
		}
		if err != nil {
			stop.Store(true)
			stalled <- err
			return
		}
		m.Ack()
	}
	var connected atomic.Bool
	broker := opts.Broker
	sub := mqttdial.Subscription{Filter: filter, Handler: handle}
	o := broker.ClientOptions().SetCleanSession(false).
		SetOrderMatters(true). // a file's chunks in order, and acknowledged after got
		SetAutoAckDisabled(true).
		// What the broker queued for the session comes as soon as it connects, before a
		// subscription's handler is set: the same handler takes it.
		SetDefaultPublishHandler(handle).
		SetAutoReconnect(true).SetMaxReconnectInterval(10 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			logger.Warn("broker connection lost; reconnecting", "broker", broker.Name(), "err", err)
		}).
		SetOnConnectHandler(func(c paho.Client) {
			if connected.Swap(true) {
				// The broker may have lost the session: subscribe again.
				if err := mqttdial.Subscribe(context.Background(), broker, c, sub); err != nil {
					logger.Error("subscribe after reconnect failed", "err", err)
					return
				}
				logger.Info("reconnected", "broker", broker.Name())
			}
		})
	c, err := mqttdial.Connect(ctx, broker, o, sub)
	if err != nil {
		return nil, err
	}
	return c, nil
}
