package agent

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/internal/tlsconf"
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
		Window: m.Inflight, Online: a.onlineStatus, Offline: a.offlineStatus, Logger: logger,
	})
}

// clientTLS is the TLS configuration for ssl:// brokers: the CA to trust (the system's
// when empty), a client certificate if given, and the name to verify.
func clientTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && serverName == "" {
		return nil, nil
	}
	c, err := tlsconf.Client(caFile, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("mqtt.ca_file, cert_file, key_file: %w", err)
	}
	c.ServerName = serverName
	return c, nil
}

// onlineStatus is the retained vigil/<device>/status published on every connect and,
// when it changed, every mqtt.telemetry_interval (refreshStatus): what a fleet view
// (`vigil fleet status`) shows of the device. It goes to every fleet watcher, so it
// stays small: counts and scores, no histories.
func (a *Agent) onlineStatus() map[string]any {
	st := a.Status(false)
	models := make([]map[string]string, 0, len(st.Models))
	for _, m := range st.Models {
		models = append(models, map[string]string{"name": m.Name, "model": m.Model, "version": m.Version, "backend": m.Backend, "state": m.State})
	}
	cameras := make([]map[string]any, 0, len(st.Cameras))
	maxDrift := -1.0
	for _, c := range st.Cameras {
		cs := map[string]any{"name": c.Name, "state": c.State}
		if d := c.Drift; d != nil && d.Baseline { // before its baseline a score means nothing
			cs["drift"] = round(d.Score, 2)
			if d.Drifting {
				cs["drifting"] = true
			}
			maxDrift = max(maxDrift, round(d.Score, 2))
		}
		cameras = append(cameras, cs)
	}
	outbox := map[string]any{"depth": st.Outbox.Depth}
	if age, ok := a.oldestQueued(); ok && st.Outbox.Depth > 0 {
		outbox["oldest_s"] = int64(age.Seconds())
	}
	status := map[string]any{
		"version": a.version, "group": a.parts().cfg.Device.Group, "models": models, "cameras": cameras,
		"started": a.started.UTC(), "outbox": outbox,
	}
	if maxDrift >= 0 {
		status["drift"] = maxDrift
	}
	if d := st.Deployment; d != nil {
		status["deployment"] = map[string]string{"id": d.Deployment, "phase": string(d.Phase), "model": d.Model, "version": d.Version}
	}
	return status
}

// offlineStatus is the identity the offline status (last will, clean stop) keeps, so
// a fleet view still shows the device in its group with its version.
func (a *Agent) offlineStatus() map[string]any {
	return map[string]any{"version": a.version, "group": a.parts().cfg.Device.Group}
}

// oldestQueued is the age of the oldest message in the outbox. Peek from the start
// makes the link's next Peek re-read at most its window of records: cheap once per
// telemetry interval.
func (a *Agent) oldestQueued() (time.Duration, bool) {
	if a.outbox == nil {
		return 0, false
	}
	msgs, err := a.outbox.Peek(0, 1)
	if err != nil || len(msgs) == 0 {
		return 0, false
	}
	return max(0, time.Since(msgs[0].TS)), true
}

// statusRefresher republishes the retained online status when what it shows changed.
type statusRefresher struct {
	link     *mqttlink.Link
	connects uint64
	last     []byte
}

// refresh publishes the online status if it differs from the last one it published on
// this connection of this link.
func (r *statusRefresher) refresh(a *Agent) {
	p := a.parts()
	link := p.link
	if link == nil {
		return
	}
	ls := link.State()
	if ls.State != mqttlink.StateConnected {
		return
	}
	if link != r.link || ls.Connects != r.connects {
		// What the link announced on connect is unknown here: publish once more.
		r.link, r.connects, r.last = link, ls.Connects, nil
	}
	status := a.onlineStatus()
	status["state"], status["device"] = "online", p.cfg.Device.ID
	b, err := json.Marshal(status)
	if err != nil || bytes.Equal(b, r.last) {
		return
	}
	link.Retain("status", b)
	r.last = b
}
