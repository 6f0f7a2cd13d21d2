// Package mqttlink is Vigil's link to the cloud: it drains the outbox to an MQTT broker
// with paho.mqtt.golang, in seq order at QoS 1, and acknowledges a message to the
// outbox only after the broker's PUBACK, so a message leaves the device's disk only
// once the broker has it. Delivery is at-least-once: after a reconnect, everything not
// yet acknowledged is published again (the cloud de-duplicates by the envelope's id and
// sees gaps by its seq). It also keeps the retained status topic: online with version
// and models on connect, offline by last will or on a clean stop.
//
// Only agent/ imports it; it knows the outbox only through the Queue interface.
package mqttlink

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/internal/backoff"
	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/internal/redact"
	"github.com/vigil-edge/vigil/sync/outbox"
)

// Queue is what the link needs of the outbox.
type Queue interface {
	// Peek returns up to n stored messages with seq > after, in seq order.
	Peek(after uint64, n int) ([]outbox.Envelope, error)
	// Ack forgets delivered messages.
	Ack(seqs ...uint64) error
	// Notify receives a token when new messages can be read.
	Notify() <-chan struct{}
}

// Link states, as shown in /api/status.
const (
	StateConnecting = "connecting"
	StateConnected  = "connected"
	StateBackoff    = "backoff"
	StateStopped    = "stopped"
)

// Options configure the link.
type Options struct {
	Brokers  []string // tried in order: tcp://, ssl://, ws://, wss://
	Device   string   // client id and topic segment
	Username string
	Password string
	// TLS is used for ssl:// and wss:// brokers; nil means the system's roots.
	TLS            *tls.Config
	TopicPrefix    string // default "vigil"
	KeepAlive      time.Duration
	ConnectTimeout time.Duration
	BackoffMin     time.Duration
	BackoffMax     time.Duration
	// Window bounds the messages published and not yet acknowledged by the broker.
	Window int
	// Online returns the fields of the retained online status besides "state"
	// (version, models, ...). It is called on every connect.
	Online func() map[string]any
	// Offline returns the fields of the retained offline status besides "state",
	// "device", "reason" and "since" (the identity a fleet view keeps showing: group,
	// version, ...). It is called on every connect, for the last will, and at a clean
	// stop.
	Offline func() map[string]any
	// AckTimeout bounds the wait for the broker's answer to a subscription or a
	// retained publish (default 30s); one that fails or times out on a connection still
	// up is sent again (see renewFailed).
	AckTimeout time.Duration
	Logger     *slog.Logger
}

// State is what the status page shows of the link.
type State struct {
	State     string `json:"state"`
	Broker    string `json:"broker,omitempty"`
	LastError string `json:"last_error,omitempty"`
	NextRetry string `json:"next_retry,omitempty"`
	Connects  uint64 `json:"connects"`
	Published uint64 `json:"published"`
	Acked     uint64 `json:"acked"`
	InFlight  int    `json:"in_flight"`
	// Renewals counts subscriptions and retained publishes sent again on the same
	// connection after the first attempt failed (a write timeout under load, no
	// answer within AckTimeout).
	Renewals uint64 `json:"renewals"`
}

// Handler receives a message on a subscribed topic. It runs on the link's receiving
// goroutine, one message at a time: it must return quickly and must not wait for the
// link (hand long work to another goroutine).
type Handler = func(topic string, payload []byte)

// Link drains a Queue to a broker, reconnecting with backoff.
type Link struct {
	q      Queue
	opts   Options
	logger *slog.Logger

	retainMu  sync.Mutex // serialises Retain
	mu        sync.Mutex // guards the fields below
	state     State
	attempted string             // the broker of the last connection attempt
	client    paho.Client        // the connected client; nil between sessions
	subs      map[string]Handler // by topic filter; renewed on every connect
	retained  map[string][]byte  // by topic; published on every connect and on change
	// failedSubs and failedPubs are the filters and retained topics whose last attempt
	// on the current connection failed; renewFailed sends them again.
	failedSubs map[string]bool
	failedPubs map[string]bool
	renew      chan struct{} // a failure was marked
}

// New returns a link; Run connects it.
func New(q Queue, opts Options) (*Link, error) {
	if len(opts.Brokers) == 0 {
		return nil, errors.New("mqtt: no broker URL")
	}
	for _, b := range opts.Brokers {
		if _, err := url.Parse(b); err != nil {
			return nil, fmt.Errorf("mqtt: broker %q: %w", b, err)
		}
	}
	if opts.Device == "" {
		return nil, errors.New("mqtt: device id is empty")
	}
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = "vigil"
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = 30 * time.Second
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = time.Second
	}
	if opts.BackoffMax < opts.BackoffMin {
		opts.BackoffMax = max(opts.BackoffMin, time.Minute)
	}
	if opts.Window <= 0 {
		opts.Window = 64
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = 30 * time.Second
	}
	return &Link{
		q: q, opts: opts, logger: opts.Logger.With("component", "mqtt"), state: State{State: StateConnecting},
		subs: map[string]Handler{}, retained: map[string][]byte{},
		failedSubs: map[string]bool{}, failedPubs: map[string]bool{}, renew: make(chan struct{}, 1),
	}, nil
}

// Subscribe receives the messages on filter (QoS 1), now if connected and again after
// every reconnect: the session is clean (the outbox, not the broker, keeps what must
// survive), so subscriptions are renewed and retained messages arrive again each time.
func (l *Link) Subscribe(filter string, h Handler) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.subs[filter] = h
	if l.client != nil {
		l.subscribeLocked(l.client, filter, h)
	}
}

// Unsubscribe stops receiving filter.
func (l *Link) Unsubscribe(filter string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.subs, filter)
	delete(l.failedSubs, filter)
	if l.client != nil {
		l.await("unsubscribe "+filter, l.client, l.client.Unsubscribe(filter), nil)
	}
}

// Retain keeps payload as the retained snapshot of topic (prefix/device/suffix):
// published now if connected and again on every connect, outside the outbox's
// sequence (DESIGN.md: status, models/state).
func (l *Link) Retain(suffix string, payload []byte) {
	topic := l.Topic(suffix)
	// retainMu keeps snapshots in order (the broker must end with the newest); l.mu is
	// not held while publishing, which may block on a congested connection.
	l.retainMu.Lock()
	defer l.retainMu.Unlock()
	l.mu.Lock()
	l.retained[topic] = payload
	client := l.client
	l.mu.Unlock()
	if client != nil {
		l.publishRetained(client, topic, payload)
	}
}

func (l *Link) publishRetained(client paho.Client, topic string, payload []byte) {
	l.await("publish "+topic, client, client.Publish(topic, 1, true, payload), l.failedPubs)
}

func (l *Link) subscribeLocked(client paho.Client, filter string, h Handler) {
	l.await("subscribe "+filter, client, client.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		h(m.Topic(), m.Payload())
	}), l.failedSubs)
}

// await waits for a token off the caller's goroutine (a handler may call Subscribe, and
// paho completes a token only after the running handler returns). A failure, or no
// answer within AckTimeout, while client is still the connection, marks the key (the
// part of what after its verb) in failed for renewFailed: paho gives up on a write
// after its write timeout without dropping the connection, so "renewed on the next
// connect" could be never (a deployment waiting for its chunks, a device whose
// retained state says "warming" for good).
func (l *Link) await(what string, client paho.Client, tok paho.Token, failed map[string]bool) {
	go func() {
		var err error
		if !tok.WaitTimeout(l.opts.AckTimeout) {
			err = fmt.Errorf("no answer from the broker within %v", l.opts.AckTimeout)
		} else if err = tok.Error(); err == nil {
			return
		}
		l.mu.Lock()
		current := l.client == client && failed != nil
		if current {
			_, key, _ := strings.Cut(what, " ")
			failed[key] = true
		}
		l.mu.Unlock()
		if !current {
			l.logger.Warn("mqtt: "+what+" failed; renewed on the next connect", "err", err)
			return
		}
		l.logger.Warn("mqtt: "+what+" failed; sending it again", "err", err)
		select {
		case l.renew <- struct{}{}:
		default:
		}
	}()
}

// renewDelay is the pause before failed subscriptions and retained publishes are sent
// again: long enough for a congested connection to drain a little.
const renewDelay = time.Second

// renewFailed sends again, on client, the subscriptions and retained publishes whose
// last attempt failed, until ctx ends (the session is over: the next connect renews
// everything anyway).
func (l *Link) renewFailed(ctx context.Context, client paho.Client) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.renew:
		}
		t := time.NewTimer(renewDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		l.retainMu.Lock() // in order with Retain: the newest snapshot is what goes again
		l.mu.Lock()
		if l.client != client {
			l.mu.Unlock()
			l.retainMu.Unlock()
			return
		}
		subs, pubs := l.failedSubs, l.failedPubs
		l.failedSubs, l.failedPubs = map[string]bool{}, map[string]bool{}
		for filter := range subs {
			if h, ok := l.subs[filter]; ok {
				l.subscribeLocked(client, filter, h)
				l.state.Renewals++
			}
		}
		for topic := range pubs {
			if payload, ok := l.retained[topic]; ok {
				l.publishRetained(client, topic, payload)
				l.state.Renewals++
			}
		}
		l.mu.Unlock()
		l.retainMu.Unlock()
	}
}

// Topic is prefix/device/suffix.
func (l *Link) Topic(suffix string) string {
	return l.opts.TopicPrefix + "/" + l.opts.Device + "/" + suffix
}

// topicFor routes a message: telemetry to .../telemetry, everything else (detections,
// actuator changes, faults) to .../events.
func (l *Link) topicFor(e outbox.Envelope) string {
	if e.Kind == "telemetry" {
		return l.Topic("telemetry")
	}
	return l.Topic("events")
}

// State reports the link's state.
func (l *Link) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

func (l *Link) update(f func(s *State)) {
	l.mu.Lock()
	f(&l.state)
	l.mu.Unlock()
}

// stableSession is how long a connection must last to reset the backoff when no
// message was acknowledged in it.
const stableSession = time.Minute

// Run connects and drains until ctx ends, then publishes the offline status and
// disconnects. It returns nil on shutdown; connection failures are retried forever.
func (l *Link) Run(ctx context.Context) error {
	failures := 0
	for {
		l.update(func(s *State) { s.State, s.NextRetry = StateConnecting, "" })
		started := time.Now()
		err := l.session(ctx, &failures)
		if time.Since(started) > stableSession {
			failures = 0 // a long quiet session counts as working even without a PUBACK
		}
		if ctx.Err() != nil {
			l.update(func(s *State) { s.State, s.InFlight = StateStopped, 0 })
			return nil
		}
		delay := backoff.Delay(l.opts.BackoffMin, l.opts.BackoffMax, failures)
		failures++
		l.update(func(s *State) {
			s.State, s.LastError, s.InFlight = StateBackoff, err.Error(), 0
			s.NextRetry = time.Now().Add(delay).UTC().Format(time.RFC3339Nano)
		})
		l.logger.Warn("mqtt link down; retrying", "err", err, "attempt", failures, "retry_in", delay.Round(time.Millisecond))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			l.update(func(s *State) { s.State = StateStopped })
			return nil
		case <-t.C:
		}
	}
}

// statusJSON is a retained status payload: fields, then state and device (which
// fields cannot override), then extra.
func (l *Link) statusJSON(state string, fields func() map[string]any, extra map[string]any) ([]byte, error) {
	m := map[string]any{}
	if fields != nil {
		if f := fields(); f != nil {
			m = f
		}
	}
	m["state"], m["device"] = state, l.opts.Device
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s status: %w", state, err)
	}
	return b, nil
}

// session is one connection: connect, announce, drain until it breaks or ctx ends.
func (l *Link) session(ctx context.Context, failures *int) error {
	lost := make(chan error, 1)
	onlineJSON, err := l.statusJSON("online", l.opts.Online, nil)
	if err != nil {
		return err
	}
	// The broker publishes the will when the connection goes without a DISCONNECT, so
	// "lost"; when is unknown now (a watcher sees it arrive).
	willJSON, err := l.statusJSON("offline", l.opts.Offline, map[string]any{"reason": "lost"})
	if err != nil {
		return err
	}

	o := paho.NewClientOptions()
	for _, b := range l.opts.Brokers {
		o.AddBroker(b)
	}
	o.SetClientID(l.opts.Device).
		SetUsername(l.opts.Username).SetPassword(l.opts.Password).
		SetCleanSession(true). // the outbox, not the broker session, is what survives
		SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(l.opts.KeepAlive).SetPingTimeout(10*time.Second).
		// A publish on a dead connection blocks for up to the write timeout before the
		// drain can notice; keep it short.
		SetConnectTimeout(l.opts.ConnectTimeout).SetWriteTimeout(5*time.Second).
		SetBinaryWill(l.Topic("status"), willJSON, 1, true).
		SetConnectionAttemptHandler(func(broker *url.URL, cfg *tls.Config) *tls.Config {
			l.mu.Lock()
			l.attempted = redact.URL(broker.String())
			l.mu.Unlock()
			return cfg
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if l.opts.TLS != nil {
		o.SetTLSConfig(l.opts.TLS)
	}
	client := paho.NewClient(o)
	tok := client.Connect()
	// paho tries the brokers one after another, each for up to ConnectTimeout.
	if err := mqttdial.Wait(ctx, tok, time.Duration(len(l.opts.Brokers))*l.opts.ConnectTimeout+time.Second); err != nil {
		client.Disconnect(0)
		if len(l.opts.Brokers) > 1 {
			tried := make([]string, len(l.opts.Brokers))
			for i, b := range l.opts.Brokers {
				tried[i] = redact.URL(b)
			}
			return fmt.Errorf("connect (tried %s): %w", strings.Join(tried, ", "), err)
		}
		return fmt.Errorf("connect to %s: %w", redact.URL(l.opts.Brokers[0]), err)
	}
	if err := mqttdial.Wait(ctx, client.Publish(l.Topic("status"), 1, true, onlineJSON), l.opts.ConnectTimeout); err != nil {
		client.Disconnect(0)
		return fmt.Errorf("publish online status: %w", err)
	}
	l.mu.Lock()
	// Connected only now that Retain publishes on this client: a status refresh that
	// sees the new connection must not be kept back until the next one.
	// LastError stays until the broker acknowledges a message: a broker that accepts
	// the connection and then drops it on every publish is not healthy.
	l.state.State, l.state.Broker = StateConnected, l.attempted
	l.state.Connects++
	l.logger.Info("mqtt connected", "broker", l.attempted)
	l.client = client
	clear(l.failedSubs)
	clear(l.failedPubs)
	for topic, payload := range l.retained {
		if topic == l.Topic("status") {
			continue // a status kept by Retain is older than the online status just published
		}
		l.publishRetained(client, topic, payload)
	}
	for filter, h := range l.subs {
		l.subscribeLocked(client, filter, h)
	}
	l.mu.Unlock()
	renewCtx, stopRenew := context.WithCancel(ctx)
	renewDone := make(chan struct{})
	go func() { defer close(renewDone); l.renewFailed(renewCtx, client) }()
	defer func() {
		stopRenew()
		<-renewDone
		l.mu.Lock()
		l.client = nil
		l.mu.Unlock()
	}()
	err = l.drain(ctx, client, lost, failures)
	if ctx.Err() != nil {
		// A clean stop says so itself; the last will is for unclean ones. No Retain may
		// publish after it (an online status would outlive the stop): the client goes
		// first, under retainMu, so a Retain under way publishes before the offline.
		l.retainMu.Lock()
		l.mu.Lock()
		l.client = nil
		l.mu.Unlock()
		offlineJSON, err := l.statusJSON("offline", l.opts.Offline,
			map[string]any{"reason": "stopped", "since": time.Now().UTC().Format(time.RFC3339)})
		if err != nil {
			l.logger.Warn("mqtt: offline status without its fields", "err", err)
			offlineJSON = willJSON
		}
		client.Publish(l.Topic("status"), 1, true, offlineJSON).WaitTimeout(2 * time.Second)
		l.retainMu.Unlock()
		client.Disconnect(250)
		return ctx.Err()
	}
	client.Disconnect(0)
	return err
}

type ack struct {
	seq uint64
	err error
}

// drain publishes the queue in seq order, keeping up to Window messages in flight,
// and acknowledges each to the queue when its PUBACK arrives. The first PUBACK of a
// session resets the reconnection backoff: only then is the link known to work.
func (l *Link) drain(ctx context.Context, client paho.Client, lost <-chan error, failures *int) (err error) {
	quit := make(chan struct{})
	defer close(quit)
	acks := make(chan ack, l.opts.Window)
	inflight := map[uint64]int{} // seq -> payload size
	var last uint64              // highest seq published in this session; a new session starts over
	healthy := false
	defer func() {
		// Name the oldest message still waiting: if the broker keeps dropping the
		// connection over one message (too large for its max_packet_size, say), that is
		// the one to look at.
		if err != nil && ctx.Err() == nil && len(inflight) > 0 {
			oldest := uint64(0)
			for seq := range inflight {
				if oldest == 0 || seq < oldest {
					oldest = seq
				}
			}
			err = fmt.Errorf("%w (oldest unacknowledged: seq %d, %d bytes)", err, oldest, inflight[oldest])
		}
	}()
	for {
		for len(inflight) < l.opts.Window {
			msgs, err := l.q.Peek(last, l.opts.Window-len(inflight))
			if err != nil {
				return fmt.Errorf("read outbox: %w", err)
			}
			if len(msgs) == 0 {
				break
			}
			for _, m := range msgs {
				payload, err := json.Marshal(m)
				if err != nil {
					return fmt.Errorf("encode seq %d: %w", m.Seq, err)
				}
				tok := client.Publish(l.topicFor(m), 1, false, payload)
				inflight[m.Seq] = len(payload)
				last = m.Seq
				go func(seq uint64) {
					// paho completes every token, with an error when the connection
					// goes; quit releases this goroutine if drain has returned first.
					select {
					case <-tok.Done():
					case <-quit:
						return
					}
					select {
					case acks <- ack{seq, tok.Error()}:
					case <-quit:
					}
				}(m.Seq)
			}
			l.update(func(s *State) { s.Published += uint64(len(msgs)); s.InFlight = len(inflight) })
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-lost:
			return fmt.Errorf("connection lost: %w", err)
		case a := <-acks:
			delete(inflight, a.seq)
			if a.err != nil {
				return fmt.Errorf("publish seq %d: %w", a.seq, a.err)
			}
			if err := l.q.Ack(a.seq); err != nil {
				return fmt.Errorf("ack seq %d in the outbox: %w", a.seq, err)
			}
			if !healthy {
				healthy, *failures = true, 0
				l.update(func(s *State) { s.LastError, s.NextRetry = "", "" })
			}
			l.update(func(s *State) { s.Acked++; s.InFlight = len(inflight) })
		case <-l.q.Notify():
		}
	}
}

// ErrNotConnected is Publish's error while the link is between sessions.
var ErrNotConnected = errors.New("mqtt: not connected")

// publishTimeout bounds Publish's wait for the broker's acknowledgement.
const publishTimeout = 30 * time.Second

// Publish sends payload to prefix/device/suffix, not retained and outside the outbox's
// sequence, and waits until the broker acknowledges it (QoS 1 or 2; QoS 0 only until
// it is written), ctx ends, or publishTimeout passes. It does not queue: between
// sessions it returns ErrNotConnected at once, and the caller retries (the samples'
// uploader sends its chunks this way, each acknowledged before the next).
func (l *Link) Publish(ctx context.Context, suffix string, payload []byte, qos byte) error {
	l.mu.Lock()
	client := l.client
	l.mu.Unlock()
	if client == nil {
		return ErrNotConnected
	}
	topic := l.Topic(suffix)
	if err := mqttdial.Wait(ctx, client.Publish(topic, qos, false, payload), publishTimeout); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}
