package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// keyAndBundle runs `vigil keygen` and copies the bundled model into a fresh directory.
func keyAndBundle(t *testing.T) (keyFile, pub, bundle string) {
	t.Helper()
	dir := t.TempDir()
	keyFile = filepath.Join(dir, "signing.key")
	code, out, errs := runVigil("keygen", "--out", keyFile)
	if code != 0 {
		t.Fatalf("keygen: exit %d: %s", code, errs)
	}
	bundle = filepath.Join(dir, "bundle")
	if err := os.CopyFS(bundle, os.DirFS(bundleDir)); err != nil {
		t.Fatal(err)
	}
	return keyFile, strings.TrimSpace(out), bundle
}

func TestKeygen(t *testing.T) {
	keyFile, pub, _ := keyAndBundle(t)
	if b, err := base64.StdEncoding.DecodeString(pub); err != nil || len(b) != 32 {
		t.Fatalf("keygen printed %q, not a base64 Ed25519 public key", pub)
	}
	fi, err := os.Stat(keyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, fi.Mode().Perm())
	}
	if data, _ := os.ReadFile(keyFile + ".pub"); strings.TrimSpace(string(data)) != pub {
		t.Errorf("%s.pub holds %q, printed %q", keyFile, data, pub)
	}
	priv, err := deploy.ReadPrivateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if deploy.PublicKeyString(priv.Public().(ed25519.PublicKey)) != pub {
		t.Error("the printed public key is not the private key's")
	}
	if code, _, errs := runVigil("keygen", "--out", keyFile); code != 1 || !strings.Contains(errs, "exists") {
		t.Errorf("keygen over an existing key: exit %d, %q", code, errs)
	}
}

func TestModelSignAndPack(t *testing.T) {
	keyFile, pub, bundle := keyAndBundle(t)
	code, out, errs := runVigil("model", "sign", bundle, "--key", keyFile)
	if code != 0 {
		t.Fatalf("sign: exit %d: %s", code, errs)
	}
	sig, err := deploy.ReadSignature(bundle)
	if err != nil {
		t.Fatal(err)
	}
	wantLines(t, out, "signed "+bundle, "sha256 "+sig.SHA256, "key    "+pub)
	archive := filepath.Join(t.TempDir(), "bundle.tar")
	if code, out, errs := runVigil("model", "pack", bundle, "--out", archive); code != 0 || !strings.Contains(out, sig.SHA256) {
		t.Fatalf("pack: exit %d %q %q", code, out, errs)
	}
	data, _ := os.ReadFile(archive)
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != sig.SHA256 || int64(len(data)) != sig.Size {
		t.Errorf("packed archive does not match signature.json")
	}

	// A bundle whose model.yaml does not fit its model is not signed.
	broken := filepath.Join(t.TempDir(), "broken")
	os.CopyFS(broken, os.DirFS(bundleDir))
	yaml, _ := os.ReadFile(filepath.Join(broken, "model.yaml"))
	os.WriteFile(filepath.Join(broken, "model.yaml"), []byte(strings.Replace(string(yaml), "width: 416", "width: 320", 1)), 0o644)
	code, _, errs = runVigil("model", "sign", broken, "--key", keyFile)
	if code != 1 || !strings.Contains(errs, "refusing a bundle that does not fit its model") || !strings.Contains(errs, "model.yaml") {
		t.Errorf("sign a broken bundle: exit %d, %q", code, errs)
	}
	if _, err := os.Stat(filepath.Join(broken, deploy.SignatureFile)); err == nil {
		t.Error("a broken bundle got a signature.json")
	}
	// Packing an unsigned or changed bundle is refused.
	if code, _, errs := runVigil("model", "pack", broken, "--out", filepath.Join(t.TempDir(), "x.tar")); code != 1 || !strings.Contains(errs, "not signed") {
		t.Errorf("pack an unsigned bundle: exit %d, %q", code, errs)
	}
	for _, args := range [][]string{
		{"model", "sign", bundle}, {"model", "sign", "--key", keyFile}, {"model", "pack", bundle},
		{"keygen", "extra"},
	} {
		if code, _, _ := runVigil(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

func TestModelPushUsage(t *testing.T) {
	for _, args := range [][]string{
		{"model", "push", "b", "--device", "d"},                                          // no broker
		{"model", "push", "b", "--broker", "tcp://x:1"},                                  // no target
		{"model", "push", "b", "--broker", "tcp://x:1", "--device", "d", "--group", "g"}, // two targets
		{"model", "push", "--broker", "tcp://x:1", "--device", "d"},                      // no bundle
		{"model", "push", "b", "--rollback", "--broker", "tcp://x:1", "--device", "d"},   // bundle with rollback
		{"model", "push", "b", "--promote", "--broker", "tcp://x:1", "--device", "d"},    // bundle with promote
		{"model", "push", "--shadow", "--broker", "tcp://x:1", "--device", "d"},          // shadow without a bundle
		{"model", "push", "--promote", "--discard-shadow", "--broker", "tcp://x:1", "--device", "d"},
		{"model", "push", "--rollback", "--promote", "--broker", "tcp://x:1", "--device", "d"},
		{"model", "push", "b", "--broker", "tcp://x:1", "--device", "d", "--via", "ftp"},      // bad via
		{"model", "push", "b", "--broker", "tcp://x:1", "--device", "d", "--via", "url"},      // url missing
		{"model", "push", "b", "--broker", "tcp://x:1", "--device", "d", "--chunk-size", "0"}, // bad chunk size
		{"model", "push", "b", "--broker", "tcp://x:1", "--device", "d", "--ca-file", "/no/such/ca.pem"},
	} {
		if code, _, errs := runVigil(args...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errs)
		}
	}
}

// answerDeployments plays a device that takes every deployment for gate-07 and reports
// it active at once (the chunks and the real agent are tested elsewhere: here only
// the command's output and exit status are).
func answerDeployments(t *testing.T, b *brokertest.Broker) {
	c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL).SetClientID("gate-07"))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	tok := c.Subscribe("vigil/gate-07/models/deploy", 1, func(c paho.Client, msg paho.Message) {
		m, err := deploy.ParseManifest(msg.Payload(), deploy.Limits{})
		if err != nil {
			return
		}
		st, _ := json.Marshal(deploy.State{Deployment: m.Deployment, Model: m.Model, Version: m.Bundle.Version, Phase: deploy.PhaseActive, Progress: 1})
		c.Publish("vigil/gate-07/models/state", 1, true, st)
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
}

func TestModelPush(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	keyFile, _, bundle := keyAndBundle(t)
	if code, _, errs := runVigil("model", "push", bundle, "--broker", b.URL, "--device", "gate-07"); code != 1 || !strings.Contains(errs, "not signed") {
		t.Fatalf("push an unsigned bundle: exit %d, %q", code, errs)
	}
	if code, _, errs := runVigil("model", "sign", bundle, "--key", keyFile); code != 0 {
		t.Fatal(errs)
	}

	// Nobody answers: exit 1 after the timeout, with the device in the table.
	code, out, errs := runVigil("model", "push", bundle, "--broker", b.URL, "--device", "gate-07", "--timeout", "300ms")
	if code != 1 {
		t.Fatalf("push without an answer: exit %d\n%s\n%s", code, out, errs)
	}
	if !regexp.MustCompile(`(?m)^gate-07\s+no answer\s+-\s+no final phase within 300ms$`).MatchString(out) {
		t.Errorf("table:\n%s", out)
	}
	wantLines(t, errs, "pushing "+bundle+" to device gate-07 via chunks", "sent 100% (3.7 MB of 3.7 MB)")

	answerDeployments(t, b)
	code, out, errs = runVigil("model", "push", "--broker", b.URL, bundle, "--device", "gate-07", "--deployment", "cli-1")
	if code != 0 {
		t.Fatalf("push: exit %d\n%s\n%s", code, out, errs)
	}
	wantLines(t, out, "deployment cli-1", "DEVICE")
	if !regexp.MustCompile(`(?m)^gate-07\s+active\s+0\.1\.1\s+-$`).MatchString(out) {
		t.Errorf("table:\n%s", out)
	}
	wantLines(t, errs, "gate-07: active")
}
