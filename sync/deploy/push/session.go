package push

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/internal/backoff"
	"github.com/vigil-edge/vigil/internal/mqttbarrier"
	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/sync/deploy"
)

// A session is one push's connection to the broker: it discovers the target's devices
// from their retained status, publishes the manifest and the chunks, and follows each
// device's deployment state until every one has reached a final phase.

// session is one connection to the broker and what it learnt about the devices.
type session struct {
	opts       Options
	target     deploy.Target
	deployment string
	client     paho.Client

	// mu protects the fields below.
	mu       sync.Mutex
	devices  map[string]string       // target device -> its last status ("online", "offline")
	versions map[string]string       // target device -> the version of opts.Model its status gives
	states   map[string]deploy.State // device -> its state for this deployment
	changed  chan struct{}           // a token when devices or states changed (capacity 1)
	// wave, in a staged rollout, is what wait waits for: the devices of the current
	// wave. nil means every target device.
	wave map[string]bool
	// late, in a staged rollout's last wave (published on the group topics), lets a
	// device that was not planned in it join the wave when it reports this deployment
	// (back from offline, or new to the group), unless it is in done.
	late bool
	done map[string]bool // devices that reached a final phase in an earlier wave

	// lost receives a token when the connection broke, reconnected when it was made
	// again (capacity 1 each).
	lost, reconnected chan struct{}
}

func newSession(opts Options, target deploy.Target, deployment string) *session {
	s := &session{
		opts: opts, target: target, deployment: deployment,
		devices: map[string]string{}, versions: map[string]string{}, states: map[string]deploy.State{}, changed: make(chan struct{}, 1),
		lost: make(chan struct{}, 1), reconnected: make(chan struct{}, 1),
	}
	if target.Device != "" {
		s.devices[target.Device] = ""
	}
	return s
}

func (s *session) notify() {
	select {
	case s.changed <- struct{}{}:
	default: // a token is already waiting
	}
}

// subscriptions are the session's topic filters and their handlers; they are
// subscribed on every (re)connect.
func (s *session) subscriptions() []mqttdial.Subscription {
	p := s.opts.TopicPrefix
	if s.target.Group != "" {
		return []mqttdial.Subscription{{Filter: p + "/+/status", Handler: s.onStatus}, {Filter: p + "/+/models/state", Handler: s.onState}}
	}
	return []mqttdial.Subscription{
		{Filter: deploy.StateTopic(p, s.target.Device), Handler: s.onState},
		{Filter: deploy.StatusTopic(p, s.target.Device), Handler: s.onStatus},
	}
}

// connect makes a new connection and subscribes, waiting for the broker's SUBACKs
// (so the retained messages are on their way before discover's barrier).
//
// Reconnecting is done here, not by paho's AutoReconnect: paho's resume of in-flight
// messages after its own reconnect races with its writer (eclipse-paho/paho.mqtt.golang
// issue 703), and a fresh client loses nothing here since every publish is retried
// until acknowledged.
func (s *session) connect(ctx context.Context) error {
	b := s.opts.Broker
	o := b.ClientOptions().SetCleanSession(true).SetAutoReconnect(false).
		SetConnectionLostHandler(func(paho.Client, error) {
			select {
			case s.lost <- struct{}{}:
			default: // one is already waiting
			}
		})
	c, err := mqttdial.Connect(ctx, b, o, s.subscriptions()...)
	if err != nil {
		return err
	}
	s.client = c
	return nil
}

// reconnect replaces a broken connection, retrying with backoff until ctx ends, and
// leaves a token in s.reconnected: the broker may have restarted without keeping its
// retained messages, so Push publishes them again.
func (s *session) reconnect(ctx context.Context) error {
	if s.client.IsConnectionOpen() {
		return nil
	}
	s.client.Disconnect(0)
	for failures := 0; ; failures++ {
		err := s.connect(ctx)
		if err == nil {
			select {
			case s.reconnected <- struct{}{}:
			default:
			}
			return nil
		}
		t := time.NewTimer(backoff.Delay(100*time.Millisecond, 5*time.Second, failures))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("broker unreachable (%v): %w", err, ctx.Err())
		case <-t.C:
		}
	}
}

// discover waits until the subscriptions made on connect have delivered their
// retained messages, so a group's devices are known before anything is published.
func (s *session) discover(ctx context.Context) error {
	barrier := s.opts.TopicPrefix + "/push/" + s.opts.Broker.ClientID + "/barrier"
	if err := mqttbarrier.Wait(ctx, s.client, barrier, barrierWait); err != nil {
		return err
	}
	if s.target.Group != "" {
		s.mu.Lock()
		n := len(s.devices)
		s.mu.Unlock()
		if n == 0 {
			return fmt.Errorf("no device of group %s: no retained %s/+/status has \"group\": %q (is the group set in the devices' device.group, and have they connected?)",
				s.target.Group, s.opts.TopicPrefix, s.target.Group)
		}
	}
	return nil
}

// onStatus learns a group's devices from their retained status, and whether a
// target device is offline.
func (s *session) onStatus(_ paho.Client, msg paho.Message) {
	var st struct {
		State  string `json:"state"`
		Group  string `json:"group"`
		Models []struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"models"`
	}
	device := levelAfterPrefix(s.opts.TopicPrefix, msg.Topic())
	if device == "" || len(msg.Payload()) == 0 || json.Unmarshal(msg.Payload(), &st) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, known := s.devices[device]
	// A device stays known once it was, whatever its group says later.
	if known || (s.target.Group != "" && st.Group == s.target.Group) {
		s.devices[device] = st.State
		for _, m := range st.Models {
			if m.Name == s.opts.Model {
				s.versions[device] = m.Version
			}
		}
		s.notify()
	}
}

// onState keeps each device's state for this deployment.
func (s *session) onState(_ paho.Client, msg paho.Message) {
	var st deploy.State
	device := levelAfterPrefix(s.opts.TopicPrefix, msg.Topic())
	if device == "" || json.Unmarshal(msg.Payload(), &st) != nil || st.Deployment != s.deployment {
		return // another deployment's state, or not a state at all
	}
	s.mu.Lock()
	_, target := s.devices[device]
	if s.late && !s.wave[device] && !s.done[device] {
		// The deployment id is this push's: whoever reports it took part.
		s.wave[device] = true
		target = true
	}
	s.mu.Unlock()
	// Called before the state is recorded, so Push cannot return while a call for
	// the final phase is still running.
	if target && s.opts.OnState != nil {
		s.opts.OnState(device, st)
	}
	s.mu.Lock()
	s.states[device] = st
	s.notify()
	s.mu.Unlock()
}

// levelAfterPrefix is the <device> of <prefix>/<device>/...
func levelAfterPrefix(prefix, topic string) string {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if !ok {
		return ""
	}
	device, _, _ := strings.Cut(rest, "/")
	return device
}

// publish publishes one retained QoS 1 message and waits for the broker's PUBACK,
// reconnecting and publishing again when the connection broke before it (retained
// messages make a repeat harmless).
func (s *session) publish(ctx context.Context, topic string, payload []byte) error {
	for {
		err := mqttdial.Wait(ctx, s.client.Publish(topic, 1, true, payload), opTimeout)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("publish %s: %w", topic, ctx.Err())
		}
		if err := s.reconnect(ctx); err != nil {
			return fmt.Errorf("publish %s: %w", topic, err)
		}
	}
}

// publishChunks publishes the archive's chunks, up to window of them unacknowledged.
func (s *session) publishChunks(ctx context.Context, archive *os.File, m *deploy.Manifest, topics []string, progress func(sent, total int64)) error {
	type pending struct {
		i    int
		data []byte
		tok  paho.Token
	}
	var inflight []pending
	var sent int64
	settle := func(p pending) error {
		if err := mqttdial.Wait(ctx, p.tok, opTimeout); err != nil {
			// The connection broke: publish it again, waiting for its acknowledgement.
			if err := s.publish(ctx, topics[p.i], p.data); err != nil {
				return fmt.Errorf("publish chunk %d: %w", p.i, err)
			}
		}
		sent += int64(len(p.data))
		if progress != nil {
			progress(sent, m.Size)
		}
		return nil
	}
	for i := range topics {
		data := make([]byte, m.ChunkLen(i))
		if _, err := archive.ReadAt(data, int64(i)*int64(m.Transfer.ChunkSize)); err != nil {
			return fmt.Errorf("read chunk %d: %w", i, err)
		}
		if len(inflight) == window {
			if err := settle(inflight[0]); err != nil {
				return err
			}
			inflight = inflight[1:]
		}
		inflight = append(inflight, pending{i, data, s.client.Publish(topics[i], 1, true, data)})
	}
	for _, p := range inflight {
		if err := settle(p); err != nil {
			return err
		}
	}
	return nil
}

// waiting are the devices wait waits for (the caller holds s.mu).
func (s *session) waiting() []string {
	var out []string
	if s.wave != nil {
		for device := range s.wave {
			out = append(out, device)
		}
		return out
	}
	for device := range s.devices {
		out = append(out, device)
	}
	return out
}

// wait waits until every device waited for (waiting) reported a final phase for
// this deployment, the timeout passed or ctx ended, and returns their rows, sorted by
// device. After a reconnect it calls republish: a broker that restarted may have lost
// the retained messages that devices still need to resume their transfers.
func (s *session) wait(ctx context.Context, republish func(context.Context) error) []DeviceResult {
	timeout := time.NewTimer(s.opts.Timeout)
	defer timeout.Stop()
	// Publishing again waits for the broker, but no longer than the wait itself.
	rctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	why := ""
	for why == "" {
		if s.allFinal() {
			break
		}
		select {
		case <-s.changed:
		case <-s.lost:
			// States are retained: subscribing again on the new connection brings
			// the latest of each device.
			if err := s.reconnect(rctx); err != nil && ctx.Err() == nil && rctx.Err() == nil {
				why = "reconnecting failed: " + err.Error()
			}
		case <-s.reconnected:
			if err := republish(rctx); err != nil {
				switch {
				case ctx.Err() != nil: // the next round says so
				case rctx.Err() != nil:
					why = fmt.Sprintf("no final phase within %v (the broker went away)", s.opts.Timeout)
				default:
					why = "publishing again after a reconnect failed: " + err.Error()
				}
			}
		case <-timeout.C:
			why = fmt.Sprintf("no final phase within %v", s.opts.Timeout)
		case <-ctx.Done():
			why = "push interrupted: " + ctx.Err().Error()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var rows []DeviceResult
	for _, device := range s.waiting() {
		status := s.devices[device]
		st, ok := s.states[device]
		r := DeviceResult{Device: device, Phase: st.Phase, Version: st.Version, Reason: st.Error}
		switch {
		case !ok:
			r.Reason = why
			if status == "offline" {
				r.Reason += " (the device is offline)"
			}
		case !st.Phase.Final():
			r.Reason = fmt.Sprintf("%s (still %s", why, st.Phase)
			if st.Phase == deploy.PhaseDownloading {
				r.Reason += fmt.Sprintf(" at %.0f%%", 100*st.Progress)
			}
			r.Reason += ")"
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b DeviceResult) int { return strings.Compare(a.Device, b.Device) })
	return rows
}

func (s *session) allFinal() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	devices := s.waiting()
	if len(devices) == 0 {
		return false
	}
	for _, device := range devices {
		if !s.states[device].Phase.Final() {
			return false
		}
	}
	return true
}
