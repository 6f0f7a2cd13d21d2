package mqttlink_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// lastStatus decodes the newest message a subscriber got.
func lastStatus(sub *brokertest.Subscriber) map[string]any {
	msgs := sub.Messages()
	if len(msgs) == 0 {
		return nil
	}
	var m map[string]any
	json.Unmarshal(msgs[len(msgs)-1].Payload, &m)
	return m
}

// proxy forwards one TCP connection at a time to target until cut is called, which
// drops every connection at once, as a network failure would. While swallowing, what
// the client sends is read and thrown away (the connection stays up): a packet lost as
// paho loses one when its write times out on a congested connection.
type proxy struct {
	ln         net.Listener
	mu         sync.Mutex
	conns      []net.Conn
	swallowing atomic.Bool
	swallowed  atomic.Int64 // bytes thrown away
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); p.forward(up, c); up.Close() }()
			go func() { defer wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.cut(); wg.Wait() })
	return p
}

// forward copies what the client sends upstream, unless swallowing.
func (p *proxy) forward(up, client net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if p.swallowing.Load() {
				p.swallowed.Add(int64(n))
			} else if _, werr := up.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// The offline status, by last will or on a clean stop, keeps the device's identity
// (Options.Offline), so a fleet view still shows the device in its group with its
// version; a clean stop says when, and each says why.
func TestOfflineStatusKeepsIdentity(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	sub := b.Subscribe(t, "cloud", "vigil/"+device+"/status")
	p := startProxy(t, strings.TrimPrefix(b.URL, "tcp://"))
	ob := newOutbox(t)
	ctx, cancel := context.WithCancel(context.Background())
	l, err := mqttlink.New(ob, mqttlink.Options{
		Brokers: []string{"tcp://" + p.ln.Addr().String()}, Device: device, KeepAlive: time.Second,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Online: func() map[string]any { return map[string]any{"version": "1.2.3", "group": "line-a"} },
		Offline: func() map[string]any {
			return map[string]any{"version": "1.2.3", "group": "line-a", "state": "not this"}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	defer func() { cancel(); <-done }()

	testkit.WaitFor(t, 10*time.Second, "the online status", func() bool { return lastStatus(sub)["state"] == "online" })
	// The network goes: the broker publishes the will.
	p.cut()
	testkit.WaitFor(t, 10*time.Second, "the last will", func() bool { return lastStatus(sub)["state"] == "offline" })
	will := lastStatus(sub)
	if will["device"] != device || will["group"] != "line-a" || will["version"] != "1.2.3" || will["reason"] != "lost" {
		t.Errorf("last will %v", will)
	}
	if _, ok := will["since"]; ok {
		t.Errorf("the will has a since, fixed when it could not be known: %v", will)
	}
	// The link reconnects through the proxy, then stops cleanly.
	testkit.WaitFor(t, 10*time.Second, "online again", func() bool { return lastStatus(sub)["state"] == "online" })
	// A status kept by Retain just before the stop must not outlive it.
	l.Retain("status", []byte(`{"state":"online","device":"`+device+`","version":"1.2.3"}`))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the deferred receive
	testkit.WaitFor(t, 10*time.Second, "the clean offline status", func() bool { return lastStatus(sub)["state"] == "offline" })
	off := lastStatus(sub)
	since, _ := off["since"].(string)
	if ts, err := time.Parse(time.RFC3339, since); err != nil || time.Since(ts) > time.Minute || off["reason"] != "stopped" ||
		off["group"] != "line-a" || off["version"] != "1.2.3" || off["device"] != device {
		t.Errorf("clean offline status %v", off)
	}
	late := b.Subscribe(t, "late", "vigil/"+device+"/status")
	testkit.WaitFor(t, 10*time.Second, "the retained offline status", func() bool {
		m := late.Messages()
		return len(m) == 1 && m[0].Retained && strings.Contains(string(m[0].Payload), `"reason":"stopped"`)
	})
}

// A status refreshed with Retain reaches the broker while connected, and on a
// reconnect the fresh online status is not overwritten by the older kept one.
func TestRetainedStatusRefresh(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	sub := b.Subscribe(t, "cloud", "vigil/"+device+"/status")
	ob := newOutbox(t)
	var mu sync.Mutex
	gen := 1
	ctx, cancel := context.WithCancel(context.Background())
	l, err := mqttlink.New(ob, mqttlink.Options{
		Brokers: []string{b.URL}, Device: device, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Online: func() map[string]any { mu.Lock(); defer mu.Unlock(); return map[string]any{"gen": gen} },
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testkit.WaitFor(t, 10*time.Second, "the online status", func() bool { return lastStatus(sub)["gen"] == 1.0 })
	l.Retain("status", []byte(`{"state":"online","device":"dev-1","gen":2}`))
	testkit.WaitFor(t, 10*time.Second, "the refreshed status", func() bool { return lastStatus(sub)["gen"] == 2.0 })

	mu.Lock()
	gen = 3
	mu.Unlock()
	b.Stop()
	testkit.WaitFor(t, 10*time.Second, "the link to notice", func() bool { return l.State().State != mqttlink.StateConnected })
	b.Restart()
	testkit.WaitFor(t, 30*time.Second, "the link to reconnect", func() bool { return l.State().Connects >= 2 })
	late := b.Subscribe(t, "late", "vigil/"+device+"/status")
	testkit.WaitFor(t, 10*time.Second, "the retained status after the reconnect", func() bool { return lastStatus(late)["gen"] != nil })
	// Publish something after, so the last status at the broker is settled when it
	// comes back (the link publishes in order).
	l.Retain("models/state", []byte(`{}`))
	state := b.Subscribe(t, "late-2", "vigil/"+device+"/models/state")
	testkit.WaitFor(t, 10*time.Second, "the marker", func() bool { return len(state.Messages()) == 1 })
	again := b.Subscribe(t, "late-3", "vigil/"+device+"/status")
	testkit.WaitFor(t, 10*time.Second, "the status", func() bool { return lastStatus(again) != nil })
	if g := lastStatus(again)["gen"]; g != 3.0 {
		t.Errorf("retained status after a reconnect has gen %v, want the fresh 3 (not the kept 2)", g)
	}
}

// A subscription or a retained publish lost on a connection that stays up (paho gives up
// on a write after its write timeout, under load) is sent again on that connection: it
// does not wait for a reconnect that may never come.
func TestLostSubscribeAndRetainAreRenewed(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	p := startProxy(t, strings.TrimPrefix(b.URL, "tcp://"))
	l := startLink(t, newOutbox(t), mqttlink.Options{Brokers: []string{"tcp://" + p.ln.Addr().String()},
		AckTimeout: 300 * time.Millisecond, KeepAlive: time.Minute})
	testkit.WaitFor(t, 10*time.Second, "the link to connect", func() bool { return l.State().State == mqttlink.StateConnected })

	var got atomic.Int32
	p.swallowing.Store(true)
	l.Subscribe("vigil/"+device+"/models/deploy", func(string, []byte) { got.Add(1) })
	l.Retain("models/state", []byte(`{"phase":"active"}`))
	// Lost, they time out and are sent again (and lost again, while this lasts).
	testkit.WaitFor(t, 15*time.Second, "the subscription and the publish to be sent again", func() bool { return l.State().Renewals >= 2 })
	p.swallowing.Store(false)
	state := b.Subscribe(t, "cloud", "vigil/"+device+"/models/state")
	testkit.WaitFor(t, 10*time.Second, "the retained model state", func() bool {
		m := state.Messages()
		return len(m) == 1 && string(m[0].Payload) == `{"phase":"active"}`
	})
	publishRetained(t, b.URL, "vigil/"+device+"/models/deploy", "m1")
	testkit.WaitFor(t, 10*time.Second, "a message on the renewed subscription", func() bool { return got.Load() == 1 })
	if st := l.State(); st.Connects != 1 {
		t.Errorf("the link reconnected (%d connects): the renewal should not need it", st.Connects)
	}
}
