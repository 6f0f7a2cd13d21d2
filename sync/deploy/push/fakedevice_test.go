package push_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// fakeDevice answers deployments the way the agent does, with the real sync/deploy
// parts (manifest parsing, signature check, transfer on disk, store), but without
// loading the model: the lead engineer's agent tests cover warm-up and the swap. It
// is the one fake in these tests, standing in for the agent.
type fakeDevice struct {
	t       testing.TB
	broker  *brokertest.Broker
	id      string
	group   string
	trusted []string
	dir     string // state directory

	// failWarmup makes every deployment fail its "warm-up" (rolled_back).
	failWarmup bool
	// restartAfter, when > 0, makes the device stop after storing that many chunks
	// of a deployment and start again from its state directory, once.
	restartAfter int
	// afterChunk, when set, runs in the device's goroutine after each chunk stored,
	// with the number stored so far.
	afterChunk func(stored int)

	store *deploy.Store
	inbox chan paho.Message // handlers hand messages to the device's goroutine
	lost  chan struct{}     // a token when the connection broke

	mu     sync.Mutex
	client paho.Client
	states []deploy.State // every state published, in order
	// transfers in progress by deployment id; one Transfer per directory.
	transfers map[string]*deploy.Transfer
	stored    int  // chunks stored since the start
	restart   bool // a restart is due
	done      chan struct{}
}

func startDevice(t testing.TB, b *brokertest.Broker, id, group string, trusted []string, opts ...func(*fakeDevice)) *fakeDevice {
	t.Helper()
	d := &fakeDevice{t: t, broker: b, id: id, group: group, trusted: trusted, dir: t.TempDir(),
		inbox: make(chan paho.Message, 10000), lost: make(chan struct{}, 1), done: make(chan struct{})}
	for _, o := range opts {
		o(d)
	}
	var err error
	if d.store, err = deploy.OpenStore(filepath.Join(d.dir, "models"), deploy.Limits{}); err != nil {
		t.Fatal(err)
	}
	d.connect()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		d.run()
	}()
	t.Cleanup(func() {
		close(d.done)
		<-stopped // a message in hand is finished before t.TempDir is removed
		d.mu.Lock()
		d.client.Disconnect(50)
		d.mu.Unlock()
	})
	return d
}

// connect connects (again) and announces the device like the agent: retained status
// with its group, subscriptions to its and its group's deploy topics, and, after a
// restart, the chunk topics of the transfers it has on disk.
func (d *fakeDevice) connect() {
	// At the start, as after a restart, the transfers in progress come from disk.
	transfers, err := deploy.LoadTransfers(filepath.Join(d.dir, "transfers"))
	if err != nil {
		d.t.Errorf("device %s: %v", d.id, err)
	}
	d.mu.Lock()
	d.transfers = map[string]*deploy.Transfer{}
	for _, tr := range transfers {
		d.transfers[tr.Manifest().Deployment] = tr
	}
	d.mu.Unlock()
	for !d.dial() {
		select {
		case <-d.done:
			return
		case <-time.After(50 * time.Millisecond): // the broker is down: retry
		}
	}
}

// dial connects once and announces the device. A lost connection is handed to the
// device's goroutine, which dials again (no paho AutoReconnect: see push.connect).
func (d *fakeDevice) dial() bool {
	o := paho.NewClientOptions().AddBroker(d.broker.URL).SetClientID("dev-"+d.id).SetCleanSession(true).
		SetWill(deploy.StatusTopic("vigil", d.id), `{"state":"offline"}`, 1, true).
		SetAutoReconnect(false).
		SetConnectionLostHandler(func(paho.Client, error) {
			select {
			case d.lost <- struct{}{}:
			default:
			}
		})
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return false
	}
	d.mu.Lock()
	d.client = c
	d.mu.Unlock()
	d.announce(c)
	return true
}

// announce runs on every (re)connect.
func (d *fakeDevice) announce(c paho.Client) {
	status, _ := json.Marshal(map[string]any{"state": "online", "group": d.group})
	d.publish(deploy.StatusTopic("vigil", d.id), status)
	d.mu.Lock()
	var last []byte
	if n := len(d.states); n > 0 {
		last, _ = json.Marshal(d.states[n-1])
	}
	d.mu.Unlock()
	if last != nil {
		d.publish(deploy.StateTopic("vigil", d.id), last)
	}
	d.subscribe(deploy.Target{Device: d.id}.DeployTopic("vigil"))
	if d.group != "" {
		d.subscribe(deploy.Target{Group: d.group}.DeployTopic("vigil"))
	}
	d.mu.Lock()
	var deployments []string
	for id := range d.transfers {
		deployments = append(deployments, id)
	}
	d.mu.Unlock()
	for _, id := range deployments {
		d.subscribeChunks(id)
	}
}

// subscribeChunks subscribes to a deployment's chunks under both of the device's
// bases: after a restart it no longer knows which one the manifest came on, and the
// deployment id is unique.
func (d *fakeDevice) subscribeChunks(deployment string) {
	d.subscribe(deploy.Target{Device: d.id}.ChunkFilter("vigil", deployment))
	if d.group != "" {
		d.subscribe(deploy.Target{Group: d.group}.ChunkFilter("vigil", deployment))
	}
}

func (d *fakeDevice) subscribe(filter string) {
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { d.inbox <- m })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		d.t.Errorf("device %s: subscribe %s: %v", d.id, filter, tok.Error())
	}
}

func (d *fakeDevice) publish(topic string, payload []byte) {
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	if tok := c.Publish(topic, 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		// The broker is away: the agent, too, publishes its latest state again when it
		// is back (announce).
		d.t.Logf("device %s: publish %s: %v", d.id, topic, tok.Error())
	}
}

func (d *fakeDevice) report(m *deploy.Manifest, phase deploy.Phase, progress float64, reason string) {
	st := deploy.State{Deployment: m.Deployment, Model: m.Model, Phase: phase, Error: reason, Progress: progress}
	if m.Bundle != nil {
		st.Version = m.Bundle.Version
	}
	d.mu.Lock()
	d.states = append(d.states, st)
	d.mu.Unlock()
	data, _ := json.Marshal(st)
	d.publish(deploy.StateTopic("vigil", d.id), data)
	if phase.Final() {
		d.store.Record(m.Model, m, phase, reason)
	}
}

// Phases returns the phases the device reported for a deployment, in order.
func (d *fakeDevice) Phases(deployment string) []deploy.Phase {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []deploy.Phase
	for _, s := range d.states {
		if s.Deployment == deployment && (len(out) == 0 || out[len(out)-1] != s.Phase) {
			out = append(out, s.Phase)
		}
	}
	return out
}

func (d *fakeDevice) run() {
	for {
		select {
		case <-d.done:
			return
		case <-d.lost:
			// The broker went away: dial until it is back; the transfers stay.
			for !d.dial() {
				select {
				case <-d.done:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		case m := <-d.inbox:
			if _, _, err := deploy.ParseChunkTopic(m.Topic()); err == nil {
				d.onChunk(m)
			} else {
				d.onManifest(m)
			}
		}
		d.mu.Lock()
		restart := d.restart
		d.restart = false
		d.mu.Unlock()
		if restart {
			// The device stops (what it received is on disk) and starts again: a new
			// store, a new connection, transfers loaded from disk.
			d.mu.Lock()
			d.client.Disconnect(0)
			d.mu.Unlock()
			for len(d.inbox) > 0 {
				<-d.inbox // lost with the process
			}
			store, err := deploy.OpenStore(filepath.Join(d.dir, "models"), deploy.Limits{})
			if err != nil {
				d.t.Error(err)
			}
			d.mu.Lock()
			d.store = store
			d.mu.Unlock()
			d.connect()
		}
	}
}

func (d *fakeDevice) onManifest(msg paho.Message) {
	m, err := deploy.ParseManifest(msg.Payload(), deploy.Limits{})
	if errors.Is(err, deploy.ErrEmptyManifest) {
		return // the operator cleared the retained manifest
	}
	if err != nil {
		d.t.Logf("device %s: %v", d.id, err)
		return
	}
	if seen, _ := d.store.Seen(m.Model, m); seen {
		return
	}
	d.store.Record(m.Model, m, deploy.PhaseReceived, "")
	d.report(m, deploy.PhaseReceived, 0, "")
	if m.Action == deploy.ActionRollback {
		if _, err := d.store.Rollback(m.Model); err != nil {
			d.report(m, deploy.PhaseRejected, 0, err.Error())
			return
		}
		d.report(m, deploy.PhaseRolledBack, 0, "rollback requested")
		return
	}
	if err := deploy.Verify(m, d.trusted); err != nil {
		d.report(m, deploy.PhaseRejected, 0, err.Error())
		return
	}
	if m.Transfer.Via == deploy.ViaURL {
		d.report(m, deploy.PhaseDownloading, 0, "")
		resp, err := http.Get(m.Transfer.URL)
		if err != nil {
			d.report(m, deploy.PhaseRejected, 0, err.Error())
			return
		}
		defer resp.Body.Close()
		d.install(m, resp.Body)
		return
	}
	tr, err := deploy.OpenTransfer(filepath.Join(d.dir, "transfers", m.Deployment), m)
	if err != nil {
		d.report(m, deploy.PhaseRejected, 0, err.Error())
		return
	}
	d.mu.Lock()
	d.transfers[m.Deployment] = tr
	d.mu.Unlock()
	d.report(m, deploy.PhaseDownloading, 0, "")
	d.subscribeChunks(m.Deployment)
}

func (d *fakeDevice) onChunk(msg paho.Message) {
	deployment, i, _ := deploy.ParseChunkTopic(msg.Topic())
	if len(msg.Payload()) == 0 {
		return // cleared
	}
	d.mu.Lock()
	tr := d.transfers[deployment]
	d.mu.Unlock()
	if tr == nil {
		return // finished, or not ours
	}
	m := tr.Manifest()
	complete, err := tr.Put(i, msg.Payload())
	if err != nil {
		d.report(m, deploy.PhaseRejected, tr.Progress(), err.Error())
		d.finish(tr)
		return
	}
	d.mu.Lock()
	d.stored++
	stored := d.stored
	if d.restartAfter > 0 && d.stored == d.restartAfter && !complete {
		d.restart = true
	}
	d.mu.Unlock()
	if d.afterChunk != nil {
		d.afterChunk(stored)
	}
	d.report(m, deploy.PhaseDownloading, tr.Progress(), "")
	if !complete {
		return
	}
	d.report(m, deploy.PhaseVerifying, 1, "")
	archive := filepath.Join(d.dir, "archive-"+m.Deployment+".tar")
	f, err := os.Create(archive)
	if err != nil {
		d.t.Error(err)
		return
	}
	defer os.Remove(archive)
	defer f.Close()
	if _, _, err := tr.Assemble(f); err != nil {
		d.report(m, deploy.PhaseRejected, 1, err.Error())
		d.finish(tr)
		return
	}
	d.finish(tr)
	f.Seek(0, 0)
	d.install(m, f)
}

func (d *fakeDevice) finish(tr *deploy.Transfer) {
	d.mu.Lock()
	delete(d.transfers, tr.Manifest().Deployment)
	d.mu.Unlock()
	tr.Remove()
}

func (d *fakeDevice) install(m *deploy.Manifest, archive interface{ Read([]byte) (int, error) }) {
	d.report(m, deploy.PhaseStaging, 1, "")
	dir, err := d.store.Install(m.Model, m, archive)
	if err != nil {
		d.report(m, deploy.PhaseRejected, 1, err.Error())
		return
	}
	d.report(m, deploy.PhaseWarming, 1, "")
	if d.failWarmup {
		d.store.Discard(m.Model, dir)
		d.report(m, deploy.PhaseRolledBack, 1, "warm-up: 3 of 10 inferences over the 50ms budget")
		return
	}
	if err := d.store.Activate(m.Model, dir); err != nil {
		d.report(m, deploy.PhaseRejected, 1, err.Error())
		return
	}
	d.report(m, deploy.PhaseActive, 1, "")
}

// Active returns the device's active bundle directory for a model.
func (d *fakeDevice) Active(model string) string {
	d.mu.Lock()
	store := d.store
	d.mu.Unlock()
	dir, _ := store.Active(model)
	return dir
}
