package agent

import (
	"context"
	"net/http"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/agent/web"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/infer/shadow"
)

// The agent as the HTTP API sees it (web.Device): each request takes one snapshot of
// the parts.

// The API's shapes, under the names the agent has always given them.
type (
	Status         = web.Status
	CameraStatus   = web.CameraStatus
	ModelStatus    = web.ModelStatus
	ShadowStatus   = shadow.Status
	ReloadResult   = web.ReloadResult
	SamplesStatus  = web.SamplesStatus
	ActuatorStatus = web.ActuatorStatus
	RuleStatus     = web.RuleStatus
	OutboxStatus   = web.OutboxStatus
)

// device is the agent behind its HTTP API.
type device struct{ a *Agent }

func (d device) Settings() config.HTTP                       { return d.a.parts().cfg.HTTP }
func (d device) Status(withHistory bool) web.Status          { return d.a.Status(withHistory) }
func (d device) Ready() (bool, []string)                     { return d.a.parts().readiness() }
func (d device) Reload(trigger string) (ReloadResult, error) { return d.a.ReloadFromFile(trigger) }

func (d device) camera(name string) (*camera, error) {
	if cam := d.a.parts().camera(name); cam != nil {
		return cam, nil
	}
	return nil, web.Errorf(http.StatusNotFound, "no camera named %q", name)
}

func (d device) Frame(name string) ([]byte, time.Time, error) {
	cam, err := d.camera(name)
	if err != nil {
		return nil, time.Time{}, err
	}
	jpeg, taken := cam.snap.Get()
	if jpeg == nil {
		return nil, time.Time{}, web.Errorf(http.StatusServiceUnavailable, "camera %s has no frame yet", name)
	}
	return jpeg, taken, nil
}

func (d device) StoredFile(store, name string) string {
	if store == "samples" {
		return d.a.samples.Path(name)
	}
	return d.a.snapshots.Path(name)
}

func (d device) FlagSample(name string) error {
	cam, err := d.camera(name)
	if err != nil {
		return err
	}
	if !cam.cfg().StoreFrames {
		return web.Errorf(http.StatusConflict, "camera %s has store_frames: false", name)
	}
	cam.flagged.Store(true)
	return nil
}

func (d device) Command(ctx context.Context, name string, cmd web.Command, remote string) (hal.State, error) {
	act, ok := d.a.parts().actuators[name]
	if !ok {
		return hal.State{}, web.Errorf(http.StatusNotFound, "no actuator named %q", name)
	}
	const reason = "http api"
	var err error
	switch {
	case cmd.Safe:
		err = act.Safe(reason)
	case cmd.Level != nil:
		err = act.Set(*cmd.Level, reason)
	default:
		err = act.Pulse(cmd.Pulse, reason)
	}
	if err != nil {
		return hal.State{}, err
	}
	body := map[string]any{"actuator": name, "command": cmd.Body, "source": "http", "remote": remote}
	d.a.recordEvent(ctx, "actuator", body)
	return act.State(), nil
}

func (d device) Acknowledge(ctx context.Context, name, by string) error {
	p := d.a.parts()
	if p.cfg.RuleNamed(name) == nil {
		return web.Errorf(http.StatusNotFound, "no rule named %q", name)
	}
	fire, ok := p.rules.Acknowledge(name, "ack")
	if !ok {
		return web.Errorf(http.StatusConflict, "rule %s is not latched waiting for an acknowledge", name)
	}
	fire.Reason += " " + by
	d.a.release(ctx, p, fire)
	return nil
}

func (d device) SetInput(name string, level hal.Level) error {
	in, ok := d.a.parts().inputs[name]
	if !ok {
		return web.Errorf(http.StatusNotFound, "no input named %q", name)
	}
	if in.sim == nil {
		return web.Errorf(http.StatusConflict, "input %s is a %s input: it is read from the hardware, not set", name, in.State().Driver)
	}
	in.sim.Set(level)
	return nil
}

func (d device) Detect(name string, image []byte) (web.InferResult, error) {
	p := d.a.parts()
	if name == "" && len(p.modOrder) > 0 {
		name = p.modOrder[0]
	}
	m, ok := p.models[name]
	if !ok {
		return web.InferResult{}, web.Errorf(http.StatusNotFound, "no model named %q", name)
	}
	run := m.acquire()
	if run == nil {
		return web.InferResult{}, web.Errorf(http.StatusServiceUnavailable, "model %s is not loaded", name)
	}
	defer run.release()
	img, err := gocv.IMDecode(image, gocv.IMReadColor)
	if err != nil || img.Empty() {
		img.Close()
		return web.InferResult{}, web.Errorf(http.StatusBadRequest, "the image cannot be decoded")
	}
	defer img.Close()
	dets, timing, err := run.detector.Detect(img, nil)
	if err != nil {
		return web.InferResult{}, web.Errorf(http.StatusInternalServerError, "detect: %v", err)
	}
	man := run.detector.Manifest()
	return web.InferResult{
		Model: name, Bundle: man.Name, Version: man.Version, Width: img.Cols(), Height: img.Rows(),
		InferenceMS: ms(timing.Infer), Detections: dets,
	}, nil
}
