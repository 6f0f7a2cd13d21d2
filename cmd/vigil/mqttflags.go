package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/internal/tlsconf"
)

// brokerFlags are the flags of an operator command that talks to the devices' broker:
// --broker, --username, --password, --ca-file, --cert-file, --key-file, --topic-prefix.
// They fill broker, which resolve completes.
type brokerFlags struct {
	broker                    mqttdial.Broker
	topicPrefix               string
	caFile, certFile, keyFile string
}

func addBrokerFlags(fs *flag.FlagSet) *brokerFlags {
	b := &brokerFlags{}
	fs.StringVar(&b.broker.URL, "broker", "", "broker URL: tcp://host:1883, ssl://host:8883, ws://, wss:// (required)")
	fs.StringVar(&b.topicPrefix, "topic-prefix", "vigil", "MQTT topic prefix (mqtt.topic_prefix on the devices)")
	fs.StringVar(&b.broker.Username, "username", "", "broker user name (default $VIGIL_MQTT_USERNAME)")
	fs.StringVar(&b.broker.Password, "password", "", "broker password (better: $VIGIL_MQTT_PASSWORD, kept out of the process list)")
	fs.StringVar(&b.caFile, "ca-file", "", "CA certificate (PEM) for ssl:// and wss:// brokers; default: the system's roots")
	fs.StringVar(&b.certFile, "cert-file", "", "client certificate (PEM), with --key-file")
	fs.StringVar(&b.keyFile, "key-file", "", "client key (PEM), with --cert-file")
	return b
}

// resolve returns the broker with the user and password from the environment when
// the flags leave them empty (not flag defaults: PrintDefaults would show the
// password) and the TLS settings built from the files (nil: the system's roots).
func (b *brokerFlags) resolve() (mqttdial.Broker, error) {
	if b.broker.Username == "" {
		b.broker.Username = os.Getenv("VIGIL_MQTT_USERNAME")
	}
	if b.broker.Password == "" {
		b.broker.Password = os.Getenv("VIGIL_MQTT_PASSWORD")
	}
	if b.caFile == "" && b.certFile == "" && b.keyFile == "" {
		return b.broker, nil
	}
	c, err := tlsconf.Client(b.caFile, b.certFile, b.keyFile)
	if err != nil {
		return mqttdial.Broker{}, fmt.Errorf("--ca-file, --cert-file, --key-file: %w", err)
	}
	b.broker.TLS = c
	return b.broker, nil
}
