// Package brokertest starts a real mosquitto broker on a loopback port for tests, with
// an optional TLS listener (a CA and server certificate made on the spot) and optional
// password authentication. Tests that use it need mosquitto installed
// (scripts/install-deps); they fail, loudly, when it is not.
package brokertest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options choose the broker's listener.
type Options struct {
	// TLS makes the listener TLS-only, with a certificate for localhost and 127.0.0.1
	// signed by a CA written to Broker.CAFile.
	TLS bool
	// Users, when set, turns anonymous access off and allows only these
	// user/password pairs.
	Users map[string]string
	// ClientCerts (with TLS) requires clients to present a certificate signed by the
	// broker's CA; one is written to Broker.ClientCertFile and ClientKeyFile.
	ClientCerts bool
	// MaxPacketSize, when set, makes the broker drop clients that send larger packets.
	MaxPacketSize int
	// Persistent keeps sessions and their queued messages across a StopGraceful and
	// Restart, so a subscriber with a persistent session misses nothing.
	Persistent bool
	// SysInterval, when set, is how often the broker publishes its $SYS/broker/...
	// counters (messages received and sent, clients, retained messages); mosquitto's
	// default is 10s.
	SysInterval time.Duration
	// Clients, when set, raises the open-file limit that mosquitto
	// inherits (one descriptor per connection) to the hard limit, and fails the test
	// if even that is too low for this many clients plus some spare.
	Clients int
}

// Broker is one mosquitto process. Stop and Start restart it on the same port.
type Broker struct {
	// URL is tcp://127.0.0.1:PORT, or ssl://localhost:PORT with TLS.
	URL    string
	Port   int
	CAFile string // TLS only
	// ClientCertFile and ClientKeyFile are a client certificate the broker accepts
	// (ClientCerts only).
	ClientCertFile, ClientKeyFile string

	t    testing.TB
	dir  string
	conf string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	log    *bytes.Buffer
}

// Start starts a broker and stops it when the test ends.
func Start(t testing.TB, opts Options) *Broker {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
			if _, err2 := os.Stat(p); err2 == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		t.Fatalf("mosquitto is needed for this test (run scripts/install-deps): %v", err)
	}
	if opts.Clients > 0 {
		raiseFileLimit(t, uint64(opts.Clients)+fileLimitSpare)
	}
	b := &Broker{t: t, dir: t.TempDir()}
	for attempt := 0; ; attempt++ {
		b.Port = freePort(t)
		b.writeConfig(opts)
		if err := b.start(bin); err == nil {
			break
		} else if attempt == 2 {
			t.Fatalf("mosquitto did not start: %v\n%s", err, b.logText())
		}
	}
	t.Cleanup(b.Stop)
	return b
}

// fileLimitSpare is room for mosquitto's own descriptors (listeners, logs) and the
// test's clients besides the simulated ones.
const fileLimitSpare = 256

// raiseFileLimit raises this process's soft open-file limit to the hard one, which
// children inherit. Go raises its own soft limit at start, but gives children the
// original soft limit (often 1024) unless the program sets the limit itself, as here.
func raiseFileLimit(t testing.TB, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("read the open-file limit: %v", err)
	}
	if lim.Max < need {
		t.Fatalf("the hard open-file limit (ulimit -Hn) is %d; mosquitto needs %d for this many clients", lim.Max, need)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raise the open-file limit to %d: %v", lim.Max, err)
	}
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (b *Broker) writeConfig(opts Options) {
	var c strings.Builder
	fmt.Fprintf(&c, "listener %d 127.0.0.1\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n", b.Port)
	// Room for a backlog queued for an offline subscriber (the default is 1000).
	c.WriteString("max_queued_messages 1000000\nmax_inflight_messages 0\n")
	if opts.SysInterval > 0 {
		fmt.Fprintf(&c, "sys_interval %d\n", max(1, int(opts.SysInterval.Round(time.Second)/time.Second)))
	}
	if opts.Clients > 0 {
		c.WriteString("max_connections -1\n")
	}
	if opts.MaxPacketSize > 0 {
		fmt.Fprintf(&c, "max_packet_size %d\n", opts.MaxPacketSize)
	}
	if opts.Persistent {
		fmt.Fprintf(&c, "persistence true\npersistence_location %s/\nautosave_interval 0\n", b.dir)
	} else {
		c.WriteString("persistence false\n")
	}
	if os.Geteuid() == 0 {
		// As root mosquitto would switch to its own user, who cannot read the test's
		// temporary files (the TLS key, the password file).
		c.WriteString("user root\n")
	}
	b.URL = fmt.Sprintf("tcp://127.0.0.1:%d", b.Port)
	if opts.TLS {
		ca, cert, key, clientCert, clientKey := writeCerts(b.t, b.dir)
		fmt.Fprintf(&c, "cafile %s\ncertfile %s\nkeyfile %s\n", ca, cert, key)
		b.CAFile = ca
		if opts.ClientCerts {
			c.WriteString("require_certificate true\n")
			b.ClientCertFile, b.ClientKeyFile = clientCert, clientKey
		}
		b.URL = fmt.Sprintf("ssl://localhost:%d", b.Port)
	}
	if len(opts.Users) > 0 {
		pw := filepath.Join(b.dir, "passwords")
		os.WriteFile(pw, nil, 0o600)
		for u, p := range opts.Users {
			if out, err := exec.Command("mosquitto_passwd", "-b", pw, u, p).CombinedOutput(); err != nil {
				b.t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
			}
		}
		fmt.Fprintf(&c, "allow_anonymous false\npassword_file %s\n", pw)
	} else {
		c.WriteString("allow_anonymous true\n")
	}
	b.conf = filepath.Join(b.dir, "mosquitto.conf")
	if err := os.WriteFile(b.conf, []byte(c.String()), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *Broker) start(bin string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log = &bytes.Buffer{}
	cmd := exec.Command(bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = b.log, b.log
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", b.Port), 200*time.Millisecond)
		if err == nil {
			conn.Close()
			b.cmd, b.exited = cmd, exited
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("mosquitto exited at start")
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			return fmt.Errorf("mosquitto not listening on %d after 10s", b.Port)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// PID is the running mosquitto's process id (for its memory and CPU), 0 when stopped.
func (b *Broker) PID() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return 0
	}
	return b.cmd.Process.Pid
}

// Stop kills the broker (a broker outage, as the client sees it). Idempotent.
func (b *Broker) Stop() { b.stop(syscall.SIGKILL) }

// StopGraceful stops the broker with SIGTERM, so a persistent broker saves its
// sessions.
func (b *Broker) StopGraceful() { b.stop(syscall.SIGTERM) }

func (b *Broker) stop(sig syscall.Signal) {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	<-exited
	// Wait until the port is free so a restart can bind it again.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", b.Port), 100*time.Millisecond)
		if err != nil {
			return
		}
		conn.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// Restart starts a stopped broker again on the same port.
func (b *Broker) Restart() {
	b.t.Helper()
	bin, _ := exec.LookPath("mosquitto")
	if bin == "" {
		bin = "/usr/sbin/mosquitto"
	}
	if err := b.start(bin); err != nil {
		b.t.Fatalf("restart mosquitto: %v\n%s", err, b.logText())
	}
}

func (b *Broker) logText() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.log == nil {
		return ""
	}
	return b.log.String()
}

// writeCerts makes a CA, a server certificate for localhost and 127.0.0.1, and a
// client certificate.
func writeCerts(t testing.TB, dir string) (caFile, certFile, keyFile, clientCertFile, clientKeyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Vigil Test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	clientKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	clientTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "vigil-device"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	clientDER, err := x509.CreateCertificate(rand.Reader, clientTmpl, ca, &clientKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	clientKeyDER, _ := x509.MarshalECPrivateKey(clientKey)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	clientCertFile, clientKeyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	write := func(path, typ string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(caFile, "CERTIFICATE", caDER)
	write(certFile, "CERTIFICATE", der)
	write(keyFile, "EC PRIVATE KEY", keyDER)
	write(clientCertFile, "CERTIFICATE", clientDER)
	write(clientKeyFile, "EC PRIVATE KEY", clientKeyDER)
	return caFile, certFile, keyFile, clientCertFile, clientKeyFile
}

// WriteOtherCA writes a CA certificate that did not sign the broker's certificate, for
// testing that a wrong CA is refused.
func WriteOtherCA(t testing.TB) string {
	dir := t.TempDir()
	ca, _, _, _, _ := writeCerts(t, dir)
	return ca
}
