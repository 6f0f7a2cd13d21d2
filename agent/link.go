package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/sync/mqttlink"
)

// newLink builds the MQTT link from the mqtt section.
func (a *Agent) newLink(cfg *config.Config, logger *slog.Logger) (*mqttlink.Link, error) {
	m := cfg.MQTT
	tlsConfig, err := clientTLS(m.CAFile, m.CertFile, m.KeyFile, m.ServerName)
	if err != nil {
		return nil, err
	}
	return mqttlink.New(a.outbox, mqttlink.Options{
		Brokers: m.Brokers, Device: cfg.Device.ID, Username: m.Username, Password: m.Password, TLS: tlsConfig,
		TopicPrefix: m.TopicPrefix, KeepAlive: m.KeepAlive, BackoffMin: m.Backoff.Min, BackoffMax: m.Backoff.Max,
		Window: m.Inflight, Online: a.onlineStatus, Logger: logger,
	})
}

// clientTLS is the TLS configuration for ssl:// brokers: the CA to trust (the system's
// when empty), a client certificate if given, and the name to verify.
func clientTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && serverName == "" {
		return nil, nil
	}
	c := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt.ca_file %s: no PEM certificate in it", caFile)
		}
		c.RootCAs = pool
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.cert_file/key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// onlineStatus is the retained vigil/<device>/status published on every connect.
func (a *Agent) onlineStatus() map[string]any {
	st := a.Status(false)
	models := make([]map[string]string, 0, len(st.Models))
	for _, m := range st.Models {
		models = append(models, map[string]string{"name": m.Name, "model": m.Model, "version": m.Version, "backend": m.Backend, "state": m.State})
	}
	cameras := make([]string, 0, len(st.Cameras))
	for _, c := range st.Cameras {
		cameras = append(cameras, c.Name)
	}
	return map[string]any{
		"version": a.version, "group": a.parts().cfg.Device.Group, "models": models, "cameras": cameras,
		"started": a.started.UTC(),
	}
}
