package push_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/vigil-edge/vigil/sync/deploy/push"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// BenchmarkPushToActive: `vigil model push` of the bundled 3.6 MB YOLOX-Nano to one
// device on a local mosquitto, until the device reports active. The device is the
// test's fake (real transfer, verification, unpack and store; no model load or warm-up),
// so this is the protocol's share of push-to-active.
func BenchmarkPushToActive(b *testing.B) {
	broker := brokertest.Start(b, brokertest.Options{})
	bundle, key := signedBundle(b)
	startDevice(b, broker, "gate-07", "", []string{key})
	o := opts(broker)
	o.Device = "gate-07"
	n := 0
	for b.Loop() {
		n++
		o.Deployment = fmt.Sprintf("bench-%d", n)
		res, err := push.Push(context.Background(), bundle, o)
		if err != nil || !res.OK() {
			b.Fatalf("push: %+v, %v", res, err)
		}
	}
}
