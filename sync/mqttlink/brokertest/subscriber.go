package brokertest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Message is one message a Subscriber received.
type Message struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Subscriber is the cloud side in tests: a paho client with a persistent session
// (clean session off, QoS 1), reconnecting by itself, that records what it receives.
type Subscriber struct {
	client paho.Client

	mu   sync.Mutex
	msgs []Message
}

// Subscribe connects a subscriber to b for topic (wildcards allowed) and waits for the
// subscription. It disconnects when the test ends.
func (b *Broker) Subscribe(t testing.TB, clientID, topic string) *Subscriber {
	t.Helper()
	s := &Subscriber{}
	o := paho.NewClientOptions().AddBroker(b.URL).SetClientID(clientID).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			s.mu.Lock()
			s.msgs = append(s.msgs, Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained()})
			s.mu.Unlock()
		})
	if b.CAFile != "" {
		pem, _ := os.ReadFile(b.CAFile)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg := &tls.Config{RootCAs: pool}
		if b.ClientCertFile != "" {
			cert, err := tls.LoadX509KeyPair(b.ClientCertFile, b.ClientKeyFile)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		o.SetTLSConfig(cfg)
	}
	s.client = paho.NewClient(o)
	if tok := s.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	if tok := s.client.Subscribe(topic, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	t.Cleanup(func() { s.client.Disconnect(100) })
	return s
}

// Messages returns a copy of what arrived so far.
func (s *Subscriber) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Seqs decodes the envelopes received (non-retained messages) and returns their seqs
// in arrival order.
func (s *Subscriber) Seqs() []uint64 {
	var out []uint64
	for _, m := range s.Messages() {
		var env struct {
			Seq uint64 `json:"seq"`
		}
		if m.Retained || json.Unmarshal(m.Payload, &env) != nil || env.Seq == 0 {
			continue
		}
		out = append(out, env.Seq)
	}
	return out
}
