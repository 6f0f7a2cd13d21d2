package upload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-edge/vigil/internal/redact"
)

// Sender sends one file of a sample. An error means the file did not arrive and is
// to be sent again later.
type Sender interface {
	Send(ctx context.Context, file string, data []byte) error
}

// HTTPOptions configure an HTTP sender.
type HTTPOptions struct {
	URL    string // files go to URL/<device>/<file>
	Device string
	Token  string      // sent as a bearer token when set
	TLS    *tls.Config // for https; nil: the system's roots
	// Timeout bounds one PUT; 0 means a minute.
	Timeout time.Duration
}

// HTTP PUTs files to an HTTP(S) endpoint.
type HTTP struct {
	base   *url.URL
	device string
	token  string
	client *http.Client
}

// NewHTTP returns an HTTP sender.
func NewHTTP(opts HTTPOptions) (*HTTP, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("upload: %q is not an http(s) URL", opts.URL)
	}
	if opts.Device == "" {
		return nil, errors.New("upload: device id is empty")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if opts.TLS != nil {
		tr.TLSClientConfig = opts.TLS
	}
	return &HTTP{base: u, device: opts.Device, token: opts.Token, client: &http.Client{Transport: tr, Timeout: opts.Timeout}}, nil
}

// Send PUTs data to URL/<device>/<file>.
func (h *HTTP) Send(ctx context.Context, file string, data []byte) error {
	u := *h.base
	u.Path = path.Join("/", u.Path, h.device, file)
	u.RawPath = ""
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("put %s: %w", file, err)
	}
	req.Header.Set("Content-Type", contentType(file))
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return fmt.Errorf("put %s: %w", file, redact.Error(err, h.base))
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	if resp.StatusCode/100 != 2 {
		detail := strings.TrimSpace(string(msg))
		if detail != "" {
			detail = ": " + detail
		}
		return fmt.Errorf("put %s: %s%s", file, resp.Status, detail)
	}
	return nil
}

// CloseIdleConnections closes the connections kept for the next PUT.
func (h *HTTP) CloseIdleConnections() { h.client.CloseIdleConnections() }

func contentType(file string) string {
	switch {
	case strings.HasSuffix(file, ".jpg"):
		return "image/jpeg"
	case strings.HasSuffix(file, ".json"):
		return "application/json"
	}
	return "application/octet-stream"
}

// Publisher is what the MQTT sender needs of the link: publish to prefix/device/suffix
// and return once the broker has acknowledged it.
type Publisher interface {
	Publish(ctx context.Context, suffix string, payload []byte, qos byte) error
}

// Manifest is the last message of a file sent over MQTT.
type Manifest struct {
	File   string `json:"file"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Chunks int    `json:"chunks"`
}

// MQTT sends files in chunks over an MQTT link.
type MQTT struct {
	pub   Publisher
	chunk int
}

// NewMQTT returns an MQTT sender cutting files into chunks of at most chunkSize bytes.
func NewMQTT(pub Publisher, chunkSize int) (*MQTT, error) {
	if chunkSize < 1 {
		return nil, fmt.Errorf("upload: chunk size %d is not positive", chunkSize)
	}
	return &MQTT{pub: pub, chunk: chunkSize}, nil
}

// Send publishes data's chunks to samples/<file>/<index>, then its manifest to
// samples/<file>.
func (m *MQTT) Send(ctx context.Context, file string, data []byte) error {
	n := (len(data) + m.chunk - 1) / m.chunk
	for i := range n {
		part := data[i*m.chunk : min(len(data), (i+1)*m.chunk)]
		if err := m.pub.Publish(ctx, "samples/"+file+"/"+strconv.Itoa(i), part, 1); err != nil {
			return fmt.Errorf("send %s chunk %d of %d: %w", file, i, n, err)
		}
	}
	sum := sha256.Sum256(data)
	man, _ := json.Marshal(Manifest{File: file, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Chunks: n})
	if err := m.pub.Publish(ctx, "samples/"+file, man, 1); err != nil {
		return fmt.Errorf("send %s manifest: %w", file, err)
	}
	return nil
}
