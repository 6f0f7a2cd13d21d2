// Package fleet is the operator's view of many devices (`vigil fleet status`): it
// subscribes to every device's retained <prefix>/<device>/status and
// <prefix>/<device>/models/state on a broker and turns them into a sorted list of
// devices (online or offline, version, models, cameras, last deployment, outbox
// backlog, drift), once (Snapshot) or as they change (Watch). It needs nothing on the
// cloud side but the broker: the retained messages are the fleet's state. Only
// cmd/vigil imports it.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/internal/mqttbarrier"
	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/sync/deploy"
)

// Options configure a view of the fleet.
type Options struct {
	// Broker is where the devices are; its ClientID defaults to vigil-fleet-<random>,
	// its Timeout (a connect, each subscribe) to 30s.
	Broker mqttdial.Broker

	TopicPrefix string // default "vigil"
	// Group, when set, keeps only the devices whose status says this group.
	Group string
	// Interval is the least time between two Watch updates (default 1s): a thousand
	// devices reconnecting make one redraw, not a thousand.
	Interval time.Duration
	// Now is the clock for when a watched device went offline (default time.Now).
	Now func() time.Time
}

// Device is one device as its retained messages show it.
type Device struct {
	Device string `json:"device"`
	// State is online or offline from the retained status; unknown when the device
	// has a models/state but no status.
	State string `json:"state"`
	// Reason says how it went offline: stopped (a clean stop) or lost (the last will:
	// the connection went without a goodbye).
	Reason string `json:"reason,omitempty"`
	// Since is when it went offline: from a clean stop's status, or when a watcher
	// saw the last will arrive; nil when unknown.
	Since   *time.Time `json:"since,omitempty"`
	Group   string     `json:"group,omitempty"`
	Version string     `json:"version,omitempty"`
	// Started is when the agent process started (online only).
	Started *time.Time `json:"started,omitempty"`
	Models  []Model    `json:"models,omitempty"`
	Cameras []Camera   `json:"cameras,omitempty"`
	Outbox  *Outbox    `json:"outbox,omitempty"`
	// Drift is the highest drift score of its cameras (nil when no camera has drift
	// monitoring with a baseline).
	Drift *float64 `json:"drift,omitempty"`
	// Deployment is the last model deployment: from the retained models/state, else
	// from the status.
	Deployment *Deployment `json:"deployment,omitempty"`
}

// Model is one configured model on a device.
type Model struct {
	Name    string `json:"name"`
	Model   string `json:"model,omitempty"`
	Version string `json:"version,omitempty"`
	Backend string `json:"backend,omitempty"`
	State   string `json:"state,omitempty"` // loaded | failed
}

// Camera is one camera on a device.
type Camera struct {
	Name     string   `json:"name"`
	State    string   `json:"state,omitempty"`
	Drift    *float64 `json:"drift,omitempty"`
	Drifting bool     `json:"drifting,omitempty"`
}

// UnmarshalJSON also reads the bare camera names older agents published.
func (c *Camera) UnmarshalJSON(b []byte) error {
	var name string
	if json.Unmarshal(b, &name) == nil {
		*c = Camera{Name: name}
		return nil
	}
	type plain Camera
	return json.Unmarshal(b, (*plain)(c))
}

// Outbox is a device's backlog of messages not yet delivered.
type Outbox struct {
	Depth   int    `json:"depth"`
	OldestS *int64 `json:"oldest_s,omitempty"` // age of the oldest, in seconds
}

// Deployment is a device's last model deployment.
type Deployment struct {
	ID       string       `json:"id"`
	Phase    deploy.Phase `json:"phase"`
	Model    string       `json:"model,omitempty"`
	Version  string       `json:"version,omitempty"`
	Progress float64      `json:"progress,omitempty"`
	Error    string       `json:"error,omitempty"`
}

// Drifting reports whether any camera of the device drifts.
func (d *Device) Drifting() bool {
	return slices.ContainsFunc(d.Cameras, func(c Camera) bool { return c.Drifting })
}

// status is the retained status payload (DESIGN.md, MQTT: status).
type status struct {
	State      string      `json:"state"`
	Group      string      `json:"group"`
	Version    string      `json:"version"`
	Reason     string      `json:"reason"`
	Since      *time.Time  `json:"since"`
	Started    *time.Time  `json:"started"`
	Models     []Model     `json:"models"`
	Cameras    []Camera    `json:"cameras"`
	Outbox     *Outbox     `json:"outbox"`
	Drift      *float64    `json:"drift"`
	Deployment *Deployment `json:"deployment"`
}

// view is what the retained messages said so far. It is safe for concurrent use.
type view struct {
	prefix string
	now    func() time.Time

	mu       sync.Mutex
	statuses map[string]*status
	states   map[string]*deploy.State
	changed  chan struct{} // a token when something changed (capacity 1)
}

func newView(prefix string, now func() time.Time) *view {
	return &view{prefix: prefix, now: now, statuses: map[string]*status{}, states: map[string]*deploy.State{}, changed: make(chan struct{}, 1)}
}

func (v *view) notify() {
	select {
	case v.changed <- struct{}{}:
	default: // one is already waiting
	}
}

// onStatus takes a <prefix>/<device>/status message.
func (v *view) onStatus(_ paho.Client, msg paho.Message) {
	device, ok := v.device(msg.Topic(), "status")
	if !ok {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.notify()
	if len(msg.Payload()) == 0 { // the retained status was cleared
		delete(v.statuses, device)
		return
	}
	var st status
	if err := json.Unmarshal(msg.Payload(), &st); err != nil || (st.State != "online" && st.State != "offline") {
		st = status{State: "unreadable"}
	}
	if st.State == "offline" && st.Since == nil && !msg.Retained() {
		// A last will, arriving now: the device went offline about now.
		t := v.now().UTC()
		st.Since = &t
	}
	v.statuses[device] = &st
}

// onState takes a <prefix>/<device>/models/state message.
func (v *view) onState(_ paho.Client, msg paho.Message) {
	device, ok := v.device(msg.Topic(), "models/state")
	if !ok {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.notify()
	var st deploy.State
	if len(msg.Payload()) == 0 || json.Unmarshal(msg.Payload(), &st) != nil || st.Deployment == "" {
		delete(v.states, device)
		return
	}
	v.states[device] = &st
}

// device is the <device> of <prefix>/<device>/<suffix>.
func (v *view) device(topic, suffix string) (string, bool) {
	rest, ok := strings.CutPrefix(topic, v.prefix+"/")
	if !ok {
		return "", false
	}
	device, ok := strings.CutSuffix(rest, "/"+suffix)
	return device, ok && device != "" && !strings.Contains(device, "/")
}

// devices is the view as a list sorted by device, only group's devices if group is set.
func (v *view) devices(group string) []Device {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := []Device{}
	add := func(name string, st *status) {
		d := Device{Device: name, State: "unknown"}
		if st != nil {
			d = Device{Device: name, State: st.State, Reason: st.Reason, Since: st.Since, Group: st.Group, Version: st.Version,
				Models: st.Models, Cameras: st.Cameras, Outbox: st.Outbox, Drift: st.Drift, Deployment: st.Deployment}
			if st.State == "online" {
				d.Started, d.Reason, d.Since = st.Started, "", nil
			}
		}
		if s := v.states[name]; s != nil {
			// Published at every phase, so newer than the status's copy.
			d.Deployment = &Deployment{ID: s.Deployment, Phase: s.Phase, Model: s.Model, Version: s.Version, Progress: s.Progress, Error: s.Error}
		}
		if group == "" || d.Group == group {
			out = append(out, d)
		}
	}
	for name, st := range v.statuses {
		add(name, st)
	}
	for name := range v.states {
		if v.statuses[name] == nil {
			add(name, nil)
		}
	}
	slices.SortFunc(out, func(a, b Device) int { return strings.Compare(a.Device, b.Device) })
	return out
}

// barrierWait bounds the echo after the retained messages. A connect and each
// subscribe are bounded by the broker's Timeout (mqttdial.DefaultTimeout when 0).
const barrierWait = 5 * time.Second

func (o *Options) defaults() error {
	if o.Broker.URL == "" {
		return errors.New("fleet: no broker URL")
	}
	if strings.ContainsAny(o.Group, "/+#") {
		return fmt.Errorf("fleet: %q cannot be a group", o.Group)
	}
	if o.TopicPrefix == "" {
		o.TopicPrefix = "vigil"
	}
	if o.Broker.ClientID == "" {
		b := make([]byte, 6)
		rand.Read(b)
		o.Broker.ClientID = "vigil-fleet-" + hex.EncodeToString(b)
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// watcher is a connection subscribed to the fleet's retained messages.
type watcher struct {
	opts   Options
	view   *view
	client paho.Client
}

// connect connects, subscribes and waits until the retained messages are in. With
// reconnect, paho reconnects by itself and the subscriptions are made again (the
// session is clean), which brings every retained message again.
func connect(ctx context.Context, opts Options, reconnect bool) (*watcher, error) {
	w := &watcher{opts: opts, view: newView(opts.TopicPrefix, opts.Now)}
	b := opts.Broker
	var connected atomic.Bool
	o := b.ClientOptions().SetCleanSession(true).
		SetOrderMatters(true). // the barrier needs messages in order
		SetAutoReconnect(reconnect).SetMaxReconnectInterval(10 * time.Second).
		SetOnConnectHandler(func(c paho.Client) {
			if connected.Swap(true) {
				// A reconnect: subscribe again; failures show as a stale view, and
				// the next reconnect tries again.
				mqttdial.Subscribe(context.Background(), b, c, w.subscriptions()...)
			}
		})
	c, err := mqttdial.Connect(ctx, b, o, w.subscriptions()...)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	w.client = c
	barrier := opts.TopicPrefix + "/fleet/" + b.ClientID + "/barrier"
	if err := mqttbarrier.Wait(ctx, w.client, barrier, barrierWait); err != nil {
		w.client.Disconnect(0)
		return nil, fmt.Errorf("fleet: %s: %w", b.Name(), err)
	}
	return w, nil
}

// subscriptions are every status and models/state.
func (w *watcher) subscriptions() []mqttdial.Subscription {
	p := w.opts.TopicPrefix
	return []mqttdial.Subscription{{Filter: p + "/+/status", Handler: w.view.onStatus}, {Filter: p + "/+/models/state", Handler: w.view.onState}}
}

// Snapshot connects, reads every device's retained messages and returns the devices,
// sorted (only opts.Group's when set; an empty list when there is none).
func Snapshot(ctx context.Context, opts Options) ([]Device, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	w, err := connect(ctx, opts, false)
	if err != nil {
		return nil, err
	}
	defer w.client.Disconnect(100)
	return w.view.devices(opts.Group), nil
}

// Watch calls update with the devices as Snapshot would, then again whenever a
// device's retained status or model state changes (at most once per opts.Interval), until ctx
// ends; then it returns nil. Across a lost connection it reconnects by itself and the
// view catches up. It returns an error when the first connection fails.
func Watch(ctx context.Context, opts Options, update func([]Device)) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	w, err := connect(ctx, opts, true)
	if err != nil {
		return err
	}
	defer w.client.Disconnect(100)
	// Drain the token the initial messages left: the first update covers them.
	select {
	case <-w.view.changed:
	default:
	}
	last := w.view.devices(opts.Group)
	update(last)
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.view.changed:
		}
		// Wait out the interval so that a burst of messages makes one update.
		t.Reset(opts.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		select {
		case <-w.view.changed: // covered by this update
		default:
		}
		// A status published again unchanged (a reconnect) is no update.
		if now := w.view.devices(opts.Group); !reflect.DeepEqual(now, last) {
			last = now
			update(now)
		}
	}
}
