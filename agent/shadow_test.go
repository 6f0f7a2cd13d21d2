package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/internal/sysstat"
	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/deploy/push"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// The ONNX model's TFLite twin, in shadow on the bundled clip: it runs on a sample of
// the frames and agrees with the running model on what it finds.
func TestShadowModelAgreement(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	twin, _ := filepath.Abs(filepath.Join("..", "infer", "testdata", "models", "yolox-nano-float16"))
	cfg.Models[0].Shadow = config.Shadow{Bundle: twin, Every: 2}
	r := start(t, cfg)
	var sh *ShadowStatus
	testkit.WaitFor(t, 60*time.Second, "the shadow to run on 8 frames", func() bool {
		sh = r.status(t).Models[0].Shadow
		return sh != nil && sh.Frames >= 8
	})
	if sh.Agreement < 0.8 || sh.Bundle != "yolox-nano-float16" || sh.Errors != 0 || sh.LatencyP50 <= 0 || sh.ActiveP50 <= 0 {
		t.Errorf("shadow %+v", sh)
	}
	if len(sh.PerClass) == 0 {
		t.Errorf("no class compared: %v", sh.PerClass)
	}
	t.Logf("shadow: agreement %.3f over %d frames, latency %.1f ms vs %.1f ms", sh.Agreement, sh.Frames, sh.LatencyP50, sh.ActiveP50)
}

// A bundle pushed with --shadow runs beside the model without replacing it, reports
// its agreement, survives a restart, and is then promoted (it becomes the running
// model) or discarded (it stops, its files go).
func TestShadowDeployment(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	state := t.TempDir()
	cfg := deployConfig(t, state, b.URL, pub)
	cfg.Models[0].Shadow.Every = 2
	r := start(t, cfg)
	testkit.WaitFor(t, 30*time.Second, "detections", func() bool { return r.agent.parts().cameras[0].stats.status().Frames > 5 })
	ctx := context.Background()
	pushTo := func(bundle string, o push.Options) *push.Result {
		t.Helper()
		o.Broker, o.Device, o.Timeout = mqttdial.Broker{URL: b.URL}, "test-01", time.Minute
		res, err := push.Push(ctx, bundle, o)
		if err != nil {
			t.Fatalf("push %+v: %v", o, err)
		}
		return res
	}

	res := pushTo(testBundle(t, "0.3.0", priv, nil), push.Options{Shadow: true})
	if !res.OK() || res.Devices[0].Phase != deploy.PhaseShadowing || res.Devices[0].Version != "0.3.0" {
		t.Fatalf("shadow push: %+v", res.Devices)
	}
	if v := runningVersion(r); v != "0.1.1" {
		t.Errorf("a shadow push replaced the running model: %s runs", v)
	}
	var sh *ShadowStatus
	testkit.WaitFor(t, 60*time.Second, "the pushed shadow to run on 4 frames", func() bool {
		sh = r.status(t).Models[0].Shadow
		return sh != nil && sh.Frames >= 4
	})
	// The same weights under another version: they must agree exactly.
	if sh.Version != "0.3.0" || sh.Deployment != res.Deployment || sh.Agreement != 1 || sh.Errors != 0 {
		t.Errorf("shadow status %+v", sh)
	}
	if tel := r.agent.telemetry(sysstat.NewCPUMeter()); tel["shadows"] == nil {
		t.Errorf("telemetry carries no shadow: %v", tel)
	}

	// A restart keeps the candidate in shadow.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	r = start(t, cfg)
	if sh := r.agent.parts().models["default"].shadow.Load(); sh == nil || sh.Deployment() != res.Deployment {
		t.Fatalf("after a restart the pushed shadow is gone: %+v", sh)
	}
	shadowDir, _, _ := r.agent.store.Shadow("default")

	res = pushTo("", push.Options{Promote: true})
	if !res.OK() || res.Devices[0].Version != "0.3.0" {
		t.Fatalf("promote: %+v", res.Devices)
	}
	if v := runningVersion(r); v != "0.3.0" {
		t.Errorf("after the promotion %s runs", v)
	}
	if sh := r.status(t).Models[0].Shadow; sh != nil {
		t.Errorf("the promoted candidate still shadows: %+v", sh)
	}
	if active, _ := r.agent.store.Active("default"); active != shadowDir {
		t.Errorf("active bundle %s, want the promoted %s", active, shadowDir)
	}

	// Nothing to promote now: refused with the reason, the model untouched.
	res = pushTo("", push.Options{Promote: true})
	if res.OK() || !strings.Contains(res.Devices[0].Reason, "no pushed shadow") || runningVersion(r) != "0.3.0" {
		t.Errorf("promote without a shadow: %+v", res.Devices)
	}

	res = pushTo(testBundle(t, "0.4.0", priv, nil), push.Options{Shadow: true})
	if !res.OK() {
		t.Fatalf("second shadow push: %+v", res.Devices)
	}
	dir, _, _ := r.agent.store.Shadow("default")
	res = pushTo("", push.Options{DiscardShadow: true})
	if !res.OK() || res.Devices[0].Phase != deploy.PhaseDiscarded {
		t.Fatalf("discard: %+v", res.Devices)
	}
	if sh := r.status(t).Models[0].Shadow; sh != nil || runningVersion(r) != "0.3.0" {
		t.Errorf("after the discard: shadow %+v, running %s", sh, runningVersion(r))
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the discarded bundle %s is still on disk: %v", dir, err)
	}
}

// A reload that replaces a model while a deployment of it warms up: what the deployment
// loaded follows the old model's settings, so it must change nothing (rejected, with
// why) rather than land on the retired model, where no camera would use it and nothing
// would ever close it. For a push and for a shadow push.
func TestDeploymentDuringReloadChangesNothing(t *testing.T) {
	for _, shadowPush := range []bool{false, true} {
		name := "push"
		if shadowPush {
			name = "shadow push"
		}
		t.Run(name, func(t *testing.T) {
			b := brokertest.Start(t, brokertest.Options{})
			pub, priv, _ := deploy.GenerateKey()
			cfg := deployConfig(t, t.TempDir(), b.URL, pub)
			cfg.Deploy.WarmupRuns, cfg.Deploy.WarmupBudget = 150, 10*time.Second // warm-up outlasts the reload
			r := start(t, cfg)
			testkit.WaitFor(t, 30*time.Second, "detections", func() bool { return r.agent.parts().cameras[0].stats.status().Frames > 5 })
			retired := r.agent.parts().models["default"]

			next := *cfg
			next.Models = slices.Clone(cfg.Models)
			next.Models[0].Threads++
			reloaded := make(chan error, 1)
			var once sync.Once
			res, err := push.Push(context.Background(), testBundle(t, "0.3.0", priv, nil), push.Options{
				Broker: mqttdial.Broker{URL: b.URL}, Device: "test-01", Timeout: time.Minute, Shadow: shadowPush,
				OnState: func(_ string, st deploy.State) {
					if st.Phase == deploy.PhaseWarming {
						once.Do(func() { go func() { _, err := r.agent.Reload(&next); reloaded <- err }() })
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := <-reloaded; err != nil {
				t.Fatal(err)
			}
			if d := res.Devices[0]; d.Phase != deploy.PhaseRejected || !strings.Contains(d.Reason, "reloaded during the deployment") {
				t.Errorf("deployment during a reload: %+v", d)
			}
			if retired.shadow.Load() != nil || retired == r.agent.parts().models["default"] {
				t.Error("the candidate went to the retired model")
			}
			if _, _, ok := r.agent.store.Shadow("default"); ok || r.agent.parts().models["default"].shadow.Load() != nil {
				t.Error("a rejected shadow push left a shadow")
			}
			if _, ok := r.agent.store.Active("default"); ok || runningVersion(r) != "0.1.1" {
				t.Errorf("a rejected push changed the model: running %s", runningVersion(r))
			}
		})
	}
}
