package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"

	"github.com/vigil-edge/vigil/internal/tlsconf"
)

// brokerFlags are the flags of an operator command that talks to the devices' broker:
// --broker, --username, --password, --ca-file, --cert-file, --key-file, --topic-prefix.
type brokerFlags struct {
	broker, username, password, topicPrefix string
	caFile, certFile, keyFile               string
}

func addBrokerFlags(fs *flag.FlagSet) *brokerFlags {
	b := &brokerFlags{}
	fs.StringVar(&b.broker, "broker", "", "broker URL: tcp://host:1883, ssl://host:8883, ws://, wss:// (required)")
	fs.StringVar(&b.topicPrefix, "topic-prefix", "vigil", "MQTT topic prefix (mqtt.topic_prefix on the devices)")
	fs.StringVar(&b.username, "username", "", "broker user name (default $VIGIL_MQTT_USERNAME)")
	fs.StringVar(&b.password, "password", "", "broker password (better: $VIGIL_MQTT_PASSWORD, kept out of the process list)")
	fs.StringVar(&b.caFile, "ca-file", "", "CA certificate (PEM) for ssl:// and wss:// brokers; default: the system's roots")
	fs.StringVar(&b.certFile, "cert-file", "", "client certificate (PEM), with --key-file")
	fs.StringVar(&b.keyFile, "key-file", "", "client key (PEM), with --cert-file")
	return b
}

// resolve fills the user and password from the environment (not flag defaults:
// PrintDefaults would show the password) and builds the TLS settings (nil: the
// system's roots).
func (b *brokerFlags) resolve() (*tls.Config, error) {
	if b.username == "" {
		b.username = os.Getenv("VIGIL_MQTT_USERNAME")
	}
	if b.password == "" {
		b.password = os.Getenv("VIGIL_MQTT_PASSWORD")
	}
	if b.caFile == "" && b.certFile == "" && b.keyFile == "" {
		return nil, nil
	}
	c, err := tlsconf.Client(b.caFile, b.certFile, b.keyFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file, --cert-file, --key-file: %w", err)
	}
	return c, nil
}
