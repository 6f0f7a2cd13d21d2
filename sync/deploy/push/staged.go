package push

// Staged rollouts (`vigil model push --group G --canary N|P%`).
//
// # How a wave reaches its devices
//
// A device takes deployments from two deploy topics, its own
// (<prefix>/<device>/models/deploy) and its group's (<prefix>/group/<G>/models/deploy),
// and fetches a chunked archive under the base of the topic the manifest came on
// (agent/deploy.go: deploy.TargetOf(topic).ChunkFilter). A manifest cannot name
// another base: the agent parses manifests strictly, so a new field would make every
// agent released so far reject the deployment. And a group manifest reaches every
// device of the group, so it cannot address a subset.
//
// So every wave but the last is published per device: a manifest and the chunks on
// each device's own topics. The last wave is published once on the group topics, with
// the same deployment id. The devices of earlier waves ignore it there (a device's
// store records every deployment id it saw, whatever the outcome: Store.Seen), so
// only the devices not yet attempted take it. Each wave's retained messages are
// cleared when the wave is over, so the broker holds one wave's at a time.
//
// What it costs: the broker sends every device the whole archive in any case (S
// bytes each). On top of that the operator uploads, and the broker retains for the
// wave's length, S per device of the per-device waves, and S once for the last wave:
// (canary + intermediate wave devices + 1) x S instead of S. With a 4 MB bundle, a
// canary of 10 devices and one wave for the rest, that is 44 MB uploaded whatever the
// fleet size; `--canary 1%` of 100,000 devices is 4 GB, and `--wave 10%` makes the
// per-device part 90% of the fleet. At that scale use a small --canary N, no --wave
// (or few large waves), or --via url, with which a wave costs one manifest per device
// and no chunks. Removing the cost needs a protocol change: a manifest field naming
// the chunk base, which agents would have to learn before it is sent.
//
// # Offline devices
//
// A device whose retained status says offline when the rollout is planned is listed
// as skipped and not waited for; so is one that went offline by the time its wave
// starts (an agent's offline status, last will or clean stop, names its group; that of
// agents before fleet status did not, and such a device is not found at all). An
// unstaged group push does the same with its one wave. A device that comes
// online, or joins the group, while the last wave is out takes that wave's group
// manifest like any member of the group: it joins the wave when it reports the
// deployment, and its row shows what it did.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/vigil-edge/vigil/sync/deploy"
)

// WaveEvent is a staged rollout's progress, given to Options.OnWave as each wave
// starts (Done false) and ends.
type WaveEvent struct {
	Wave, Waves int // this wave (1 is the canary) and how many are planned
	Devices     []string
	// PerDevice says the wave is published on each device's topics; the last wave is
	// published once on the group topics.
	PerDevice bool
	Done      bool
	// Once Done: the wave's devices that failed, and the failures of all the waves so
	// far (what MaxFailures bounds).
	Failed, Failures int
}

// Plan is what a push will do: its waves, in order, and the devices it skips.
type Plan struct {
	Target     deploy.Target
	Deployment string
	Staged     bool
	// Via and Size describe the transfer (Size 0 for a rollback).
	Via  string
	Size int64
	// Waves[0] is the canary of a staged rollout; an unstaged push is one wave.
	Waves []Wave
	// Skipped are the devices offline when the plan was made.
	Skipped []PlannedDevice
}

// Wave is one wave of a plan.
type Wave struct {
	Devices []PlannedDevice
	// PerDevice: manifest and chunks are published on each device's topics, not once
	// on the target's.
	PerDevice bool
}

// PlannedDevice is a device as its retained status describes it.
type PlannedDevice struct {
	Device string
	Status string // "online", "offline", or "" when no status is retained
	// Version is the version of the pushed model (Options.Model) its status reports,
	// "" when unknown.
	Version string
}

// DryRun connects, finds the target's devices as Push does and returns the plan,
// publishing nothing (only the non-retained message discover uses as a barrier). The
// bundle is checked as for a push.
func DryRun(ctx context.Context, bundleDir string, opts Options) (*Plan, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	b, err := build(ctx, bundleDir, opts)
	if err != nil {
		return nil, err
	}
	defer b.close()
	s := newSession(opts, deploy.Target{Device: opts.Device, Group: opts.Group}, b.m.Deployment)
	if err := s.connect(ctx); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	defer func() { s.client.Disconnect(250) }()
	if err := s.discover(ctx); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	return s.plan(b)
}

// staged reports whether the options ask for a staged rollout.
func (o *Options) staged() bool { return o.Canary != "" || len(o.CanaryDevices) > 0 }

// CheckStaged checks the staged-rollout options (Push and DryRun do too), so a
// command can tell a usage error from a failed push.
func (o *Options) CheckStaged() error {
	if !o.staged() {
		if o.Wave != "" || o.MaxFailures != 0 {
			return errors.New("push: --wave and --max-failures go with --canary or --canary-devices")
		}
		return nil
	}
	if o.Group == "" {
		return errors.New("push: a staged rollout (--canary) needs --group")
	}
	if o.Canary != "" && len(o.CanaryDevices) > 0 {
		return errors.New("push: give one of --canary and --canary-devices")
	}
	if o.MaxFailures < 0 {
		return fmt.Errorf("push: --max-failures %d is negative", o.MaxFailures)
	}
	if o.Canary != "" {
		if _, err := parseShare("--canary", o.Canary); err != nil {
			return err
		}
	}
	if o.Wave != "" {
		if _, err := parseShare("--wave", o.Wave); err != nil {
			return err
		}
	}
	for _, d := range o.CanaryDevices {
		if d == "" || strings.ContainsAny(d, "/+#") {
			return fmt.Errorf("push: --canary-devices: %q cannot be a device id", d)
		}
	}
	return nil
}

// share is a wave size: n devices, or pct percent of them.
type share struct {
	n   int
	pct float64
}

// parseShare parses "N" (a positive count) or "P%" (0 < P <= 100).
func parseShare(flag, s string) (share, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		pct, err := strconv.ParseFloat(p, 64)
		if err != nil || !(pct > 0 && pct <= 100) {
			return share{}, fmt.Errorf("push: %s %q: want a count N or a percentage P%% with 0 < P <= 100", flag, s)
		}
		return share{pct: pct}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return share{}, fmt.Errorf("push: %s %q: want a count N >= 1 or a percentage P%%", flag, s)
	}
	return share{n: n}, nil
}

// of is the share of total devices: at most total, at least 1, percentages rounded up.
func (sh share) of(total int) int {
	n := sh.n
	if sh.pct > 0 {
		// The epsilon keeps 10% of 30 at 3, where float rounding gives 3.0000000000000004.
		n = int(math.Ceil(sh.pct*float64(total)/100 - 1e-9))
	}
	return max(1, min(n, total))
}

// plan makes the plan from the devices discover found.
func (s *session) plan(b *built) (*Plan, error) {
	p := &Plan{Target: s.target, Deployment: b.m.Deployment, Staged: s.opts.staged(), Via: s.opts.Via}
	if b.archive != nil {
		p.Size = b.m.Size
	}
	s.mu.Lock()
	var all []PlannedDevice
	for device, status := range s.devices {
		all = append(all, PlannedDevice{Device: device, Status: status, Version: s.versions[device]})
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b PlannedDevice) int { return strings.Compare(a.Device, b.Device) })
	if s.target.Device != "" {
		// One device, named: waited for even while offline (it may come back).
		p.Waves = []Wave{{Devices: all}}
		return p, nil
	}
	var online []PlannedDevice
	for _, d := range all {
		if d.Status == "offline" {
			p.Skipped = append(p.Skipped, d)
		} else {
			online = append(online, d)
		}
	}
	if len(online) == 0 {
		return nil, fmt.Errorf("push: no device of group %s is online (%d offline)", s.opts.Group, len(p.Skipped))
	}
	if !p.Staged {
		// One wave on the group's topics, waiting for the devices online.
		p.Waves = []Wave{{Devices: online}}
		return p, nil
	}
	var canary, rest []PlannedDevice
	if len(s.opts.CanaryDevices) > 0 {
		want := map[string]bool{}
		for _, name := range s.opts.CanaryDevices {
			i := slices.IndexFunc(all, func(d PlannedDevice) bool { return d.Device == name })
			switch {
			case i < 0:
				return nil, fmt.Errorf("push: --canary-devices: %s is not a device of group %s (no retained %s/%s/status with \"group\": %q)",
					name, s.opts.Group, s.opts.TopicPrefix, name, s.opts.Group)
			case all[i].Status == "offline":
				return nil, fmt.Errorf("push: --canary-devices: %s is offline", name)
			}
			want[name] = true
		}
		for _, d := range online {
			if want[d.Device] {
				canary = append(canary, d)
			} else {
				rest = append(rest, d)
			}
		}
	} else {
		sh, _ := parseShare("--canary", s.opts.Canary) // checked by defaults
		n := sh.of(len(online))
		canary, rest = online[:n], online[n:]
	}
	p.Waves = append(p.Waves, Wave{Devices: canary, PerDevice: true})
	size := len(rest)
	if s.opts.Wave != "" {
		sh, _ := parseShare("--wave", s.opts.Wave)
		size = sh.of(len(online))
	}
	for len(rest) > 0 {
		n := min(size, len(rest))
		p.Waves = append(p.Waves, Wave{Devices: rest[:n], PerDevice: true})
		rest = rest[n:]
	}
	// The last wave goes out once on the group topics (see the top of this file).
	p.Waves[len(p.Waves)-1].PerDevice = false
	return p, nil
}

// Write prints the plan: a table (wave, device, status, version of the model now)
// and a line per wave saying how it is published.
func (p *Plan) Write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tDEVICE\tSTATUS\tVERSION\tNOTE")
	for i, wave := range p.Waves {
		for _, d := range wave.Devices {
			label := strconv.Itoa(i + 1)
			if p.Staged {
				label = waveLabel(i + 1)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t-\n", label, d.Device, orDash(d.Status), orDash(d.Version))
		}
	}
	for _, d := range p.Skipped {
		fmt.Fprintf(tw, "-\t%s\t%s\t%s\tskipped: offline, not waited for\n", d.Device, orDash(d.Status), orDash(d.Version))
	}
	tw.Flush()
	for i, wave := range p.Waves {
		var how string
		switch {
		case wave.PerDevice && p.Size > 0 && p.Via == deploy.ViaChunks:
			how = fmt.Sprintf("a manifest and the chunks on each device's topics (%d x %s)", len(wave.Devices), mb(p.Size))
		case wave.PerDevice:
			how = "a manifest on each device's topic"
		case p.Size > 0 && p.Via == deploy.ViaChunks:
			how = fmt.Sprintf("the manifest and the chunks once on the %s topics (%s)", p.Target, mb(p.Size))
		default:
			how = fmt.Sprintf("the manifest once on the %s topic", p.Target)
		}
		fmt.Fprintf(w, "wave %s: %d device(s); published as %s\n", waveLabel(i+1), len(wave.Devices), how)
	}
	if len(p.Skipped) > 0 {
		fmt.Fprintf(w, "skipped: %d device(s) offline\n", len(p.Skipped))
	}
}

// waveLabel is a wave's number for the tables; 1 is the canary, 0 no wave.
func waveLabel(n int) string {
	switch n {
	case 0:
		return "-"
	case 1:
		return "1 (canary)"
	}
	return strconv.Itoa(n)
}

// pushStaged is Push for a staged rollout: it plans the waves, then publishes each,
// waits for its devices' final phases (Options.Timeout per wave), clears it, and
// stops before the next wave when the failures so far pass MaxFailures.
func pushStaged(ctx context.Context, bundleDir string, opts Options) (*Result, error) {
	b, err := build(ctx, bundleDir, opts)
	if err != nil {
		return nil, err
	}
	defer b.close()
	group := deploy.Target{Group: opts.Group}
	s := newSession(opts, group, b.m.Deployment)
	if err := s.connect(ctx); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	defer func() { s.client.Disconnect(250) }()
	if err := s.discover(ctx); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	plan, err := s.plan(b)
	if err != nil {
		return nil, err
	}

	res := &Result{Deployment: b.m.Deployment, Success: b.success, Staged: true, MaxFailures: opts.MaxFailures}
	row := map[string]int{} // device -> index in res.Devices
	put := func(r DeviceResult) {
		if i, ok := row[r.Device]; ok {
			res.Devices[i] = r // a device that joined the last wave
			return
		}
		row[r.Device] = len(res.Devices)
		res.Devices = append(res.Devices, r)
	}
	for _, d := range plan.Skipped {
		put(DeviceResult{Device: d.Device, Skipped: true, Reason: "offline when the rollout was planned"})
	}
	s.mu.Lock()
	s.done = map[string]bool{}
	s.mu.Unlock()
	var errs []error
	stop := ""
	for i, wave := range plan.Waves {
		n := i + 1
		if stop != "" {
			res.Stopped = stop
			for _, d := range wave.Devices {
				put(DeviceResult{Device: d.Device, Wave: n, Skipped: true, Reason: "not attempted: " + stop})
			}
			continue
		}
		// A device that went offline since the plan is not waited for.
		var devices []string
		s.mu.Lock()
		for _, d := range wave.Devices {
			if s.devices[d.Device] == "offline" {
				put(DeviceResult{Device: d.Device, Wave: n, Skipped: true, Reason: fmt.Sprintf("offline when wave %d started", n)})
			} else {
				devices = append(devices, d.Device)
			}
		}
		s.wave = map[string]bool{}
		for _, d := range devices {
			s.wave[d] = true
		}
		s.late = !wave.PerDevice
		s.mu.Unlock()
		if len(devices) == 0 {
			continue
		}
		targets := []deploy.Target{group}
		if wave.PerDevice {
			targets = targets[:0]
			for _, d := range devices {
				targets = append(targets, deploy.Target{Device: d})
			}
		}
		if opts.OnWave != nil {
			opts.OnWave(WaveEvent{Wave: n, Waves: len(plan.Waves), Devices: devices, PerDevice: wave.PerDevice})
		}
		d := &delivery{s: s, b: b, targets: targets}
		if err := d.publish(ctx, opts.Progress); err != nil {
			err = errors.Join(fmt.Errorf("push: wave %d: %w", n, err), d.clear())
			if i == 0 {
				return nil, err // nothing was out before: as for an unstaged push
			}
			errs = append(errs, err)
			stop = fmt.Sprintf("wave %d could not be published", n)
			for _, dev := range devices {
				put(DeviceResult{Device: dev, Wave: n, Reason: stop})
			}
			continue
		}
		rows := s.wait(ctx, func(ctx context.Context) error { return d.publish(ctx, nil) })
		if err := d.clear(); err != nil {
			errs = append(errs, fmt.Errorf("wave %d: %w", n, err))
		}
		failed := 0
		s.mu.Lock()
		for _, r := range rows {
			r.Wave = n
			put(r)
			if r.Phase.Final() {
				s.done[r.Device] = true
			}
			if r.Phase != b.success {
				failed++
			}
		}
		s.wave, s.late = nil, false
		s.mu.Unlock()
		failures := res.Failures()
		if opts.OnWave != nil {
			opts.OnWave(WaveEvent{Wave: n, Waves: len(plan.Waves), Devices: devices, PerDevice: wave.PerDevice,
				Done: true, Failed: failed, Failures: failures})
		}
		switch {
		case ctx.Err() != nil: // its devices count as failures too, but that is not why
			stop = "push interrupted"
		case failures > opts.MaxFailures:
			stop = fmt.Sprintf("%d failed by wave %d, over --max-failures %d", failures, n, opts.MaxFailures)
		}
	}
	slices.SortStableFunc(res.Devices, func(a, b DeviceResult) int {
		if a.Wave != b.Wave {
			// Waves in order, the devices in none last.
			if a.Wave == 0 || b.Wave == 0 {
				return b.Wave - a.Wave
			}
			return a.Wave - b.Wave
		}
		return strings.Compare(a.Device, b.Device)
	})
	return res, errors.Join(errs...)
}
