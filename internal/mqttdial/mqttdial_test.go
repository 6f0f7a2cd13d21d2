package mqttdial_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/internal/tlsconf"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// Connect subscribes before it returns: a retained message published earlier arrives.
func TestConnectSubscribes(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{TLS: true, ClientCerts: true, Users: map[string]string{"op": "right"}})
	tlsConfig, err := tlsconf.Client(b.CAFile, b.ClientCertFile, b.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	broker := mqttdial.Broker{URL: b.URL, Username: "op", Password: "right", TLS: tlsConfig, Timeout: 10 * time.Second}
	ctx := context.Background()

	broker.ClientID = "pub"
	pub, err := mqttdial.Connect(ctx, broker, broker.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Disconnect(0)
	if tok := pub.Publish("vigil/dev/status", 1, true, "online"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}

	got := make(chan string, 1)
	broker.ClientID = "sub"
	sub, err := mqttdial.Connect(ctx, broker, broker.ClientOptions(), mqttdial.Subscription{
		Filter:  "vigil/+/status",
		Handler: func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Disconnect(0)
	select {
	case p := <-got:
		if p != "online" {
			t.Errorf("got %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no retained message")
	}
}

// A refused connect names the broker without its password.
func TestConnectRefusedHidesThePassword(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Users: map[string]string{"op": "right"}})
	url := strings.Replace(b.URL, "tcp://", "tcp://op:wrong@", 1)
	broker := mqttdial.Broker{URL: url, Username: "op", Password: "wrong", ClientID: "op"}
	_, err := mqttdial.Connect(context.Background(), broker, broker.ClientOptions())
	if err == nil || !strings.Contains(err.Error(), "connect to tcp://op:xxxxx@") || strings.Contains(err.Error(), "wrong") {
		t.Errorf("wrong password: %v", err)
	}
}

// A broker that accepts the TCP connection and never answers: Connect gives up after
// the timeout, or as soon as ctx ends.
func TestConnectNoAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	broker := mqttdial.Broker{URL: "tcp://" + ln.Addr().String(), ClientID: "op", Timeout: 200 * time.Millisecond}
	_, err = mqttdial.Connect(context.Background(), broker, broker.ClientOptions())
	if err == nil || !strings.Contains(err.Error(), "no answer from the broker in 200ms") {
		t.Errorf("silent broker: %v", err)
	}

	broker.Timeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err = mqttdial.Connect(ctx, broker, broker.ClientOptions()); err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("ctx ended: %v", err)
	}
}
