package upload_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
	"github.com/vigil-edge/vigil/sync/upload"
)

// A file that cannot be saved (got returns an error, as for a full disk) is not lost:
// its manifest is not acknowledged, Subscribe connects again after RetryDelay, the
// broker delivers the manifest again, and the chunks, still in the spool, give the
// file again; saved, the spool is emptied.
func TestSubscribeReceiveSaveFailsThenRetried(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	spool := filepath.Join(t.TempDir(), ".partial")
	r := newReceiver(t, "vigil", upload.ReceiverOptions{Spool: spool})
	data := randomBytes(10_000)
	msgs := sent(t, "dev-1", "door-1.jpg", data, 4096)

	var mu sync.Mutex
	var tries int
	var saved []byte
	ctx, cancel := context.WithCancel(context.Background())
	subscribed := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- upload.Subscribe(ctx, upload.SubscribeOptions{
			Broker: mqttdial.Broker{URL: b.URL, ClientID: "rx-retry"}, RetryDelay: 50 * time.Millisecond,
			Subscribed: func(string) { close(subscribed) },
		}, r, func(f *upload.File, err error) error {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("got error %v", err)
				return nil
			}
			if tries++; tries == 1 {
				return errors.New("no space left on device")
			}
			saved = f.Data
			return nil
		})
	}()
	defer func() { cancel(); <-done }()
	select {
	case <-subscribed:
	case <-time.After(30 * time.Second):
		t.Fatal("not subscribed in 30s")
	}

	pub := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL).SetClientID("dev-1-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher: %v", tok.Error())
	}
	defer pub.Disconnect(0)
	for _, m := range msgs {
		if tok := pub.Publish(m.topic, 1, false, m.payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", m.topic, tok.Error())
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		ok, n := saved != nil, tries
		mu.Unlock()
		if ok {
			if n != 2 || !bytes.Equal(saved, data) {
				t.Errorf("saved %d bytes after %d tries, want the file's %d after 2", len(saved), n, len(data))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the file was not saved again in 30s (%d tries)", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if files := spoolFiles(t, spool); len(files) != 0 {
		t.Errorf("spool after the save: %v", files)
	}
}
