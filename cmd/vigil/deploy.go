package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vigil-edge/vigil/infer/modelfile"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/deploy/push"
)

const keygenUsage = `Usage: vigil keygen [--out FILE]

Makes an Ed25519 key pair for signing model bundles. The private key goes to FILE
(mode 0600; an existing file is never overwritten), the public key to FILE.pub and to
stdout: add that line to trust.keys in each device's config.

Flags:
`

func keygen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "vigil-signing.key", "private key file to write")
	fs.Usage = func() { fmt.Fprint(stderr, keygenUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	pub, priv, err := deploy.GenerateKey()
	if err == nil {
		err = deploy.WritePrivateKey(*out, priv)
	}
	if err == nil {
		err = os.WriteFile(*out+".pub", []byte(deploy.PublicKeyString(pub)+"\n"), 0o644)
	}
	if err != nil {
		fmt.Fprintf(stderr, "vigil keygen: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stderr, "private key: %s (keep it secret)\npublic key:  %s.pub; add it to trust.keys on the devices:\n", *out, *out)
	fmt.Fprintln(stdout, deploy.PublicKeyString(pub))
	return exitOK
}

// parseArgs parses flags that may come before or after positional arguments.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

const signUsage = `Usage: vigil model sign BUNDLE_DIR --key FILE

Checks the bundle (model.yaml against its model, as 'vigil model inspect' does) and
signs it: writes BUNDLE_DIR/signature.json with the SHA-256 and size of the bundle's
archive and an Ed25519 signature by the key from 'vigil keygen'. Sign again after any
change to the bundle. Exit status 1 when the bundle does not fit its model.

Flags:
`

func signModel(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("model sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyFile := fs.String("key", "", "private key file written by 'vigil keygen' (required)")
	fs.Usage = func() { fmt.Fprint(stderr, signUsage); fs.PrintDefaults() }
	pos, err := parseArgs(fs, args)
	if err != nil {
		return parseExit(err)
	}
	if len(pos) != 1 || *keyFile == "" {
		fmt.Fprintf(stderr, "vigil model sign: want one BUNDLE_DIR and --key FILE\n\n")
		fs.Usage()
		return exitUsage
	}
	dir := pos[0]
	if _, _, err := modelfile.CheckBundle(dir); err != nil {
		fmt.Fprintf(stderr, "vigil model sign: refusing a bundle that does not fit its model: %v\n", err)
		return exitFailed
	}
	priv, err := deploy.ReadPrivateKey(*keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "vigil model sign: %v\n", err)
		return exitFailed
	}
	sig, err := deploy.SignBundle(dir, priv)
	if err != nil {
		fmt.Fprintf(stderr, "vigil model sign: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "signed %s\n  sha256 %s\n  size   %d bytes\n  key    %s\n", dir, sig.SHA256, sig.Size, sig.Key)
	return exitOK
}

const packUsage = `Usage: vigil model pack BUNDLE_DIR --out FILE

Writes the signed bundle's archive (the bytes whose SHA-256 is signed) to FILE, for
'vigil model push --via url': upload FILE where the devices can fetch it.

Flags:
`

func packModel(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("model pack", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "archive file to write (required)")
	fs.Usage = func() { fmt.Fprint(stderr, packUsage); fs.PrintDefaults() }
	pos, err := parseArgs(fs, args)
	if err != nil {
		return parseExit(err)
	}
	if len(pos) != 1 || *out == "" {
		fmt.Fprintf(stderr, "vigil model pack: want one BUNDLE_DIR and --out FILE\n\n")
		fs.Usage()
		return exitUsage
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintf(stderr, "vigil model pack: %v\n", err)
		return exitFailed
	}
	sig, err := deploy.CheckSigned(pos[0], f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(*out)
		fmt.Fprintf(stderr, "vigil model pack: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes, sha256 %s)\n", *out, sig.Size, sig.SHA256)
	return exitOK
}

const pushUsage = `Usage: vigil model push BUNDLE_DIR --broker URL (--device ID | --group NAME) [flags]
       vigil model push BUNDLE_DIR --shadow --broker URL (--device ID | --group NAME) [flags]
       vigil model push (--promote | --discard-shadow | --rollback) --broker URL (--device ID | --group NAME) [flags]
       vigil model push BUNDLE_DIR --broker URL --group NAME --canary N|P% [--wave N|P%]
                        [--max-failures K] [--dry-run] [flags]

Publishes a signed bundle (see 'vigil model sign') to a device or to every device of a
group (those whose retained <prefix>/<device>/status says "group": NAME), retained at
QoS 1: the archive in chunks, then the deployment manifest. Then waits for each
device's final phase (active, rejected, rolled_back) on its retained models/state,
prints a table (device, phase, version, reason) and clears the retained messages. A
group's devices offline when the push starts are listed as skipped, not waited for.
--rollback instead asks the devices to return to their previous bundle.

--shadow delivers the bundle the same way, but the devices run it in shadow beside
the model on a sample of frames (models[].shadow.every, default 1 in 10) and report
how the two agree (status page, /api/status models[].shadow, telemetry); it ends in
"shadowing". --promote then swaps that candidate in (warm-up and watch window as for
a push), --discard-shadow drops it.

Staged rollout (--canary or --canary-devices, with --group): the canary devices (the
first N, or P% rounded up, of the group's online devices in device id order) get the
deployment first; once each reached its final phase, the rest follow in waves of
--wave devices (default: all of them in one wave). After each wave the failures so far
(rejected, rolled_back, no answer) are counted; more than --max-failures stops the
rollout before the next wave, and the devices not attempted are listed as skipped.
Devices offline when the rollout starts are skipped and not waited for. --timeout
applies to each wave. Every wave but the last is published on each device's own
topics (the chunks once per device); the last once on the group's. --dry-run prints
the plan (wave, device, status, version) and publishes nothing.

Exit status 0 when every device reached the phase asked for (active; rolled_back for
--rollback, shadowing for --shadow, discarded for --discard-shadow) or, for a staged
rollout, every wave ran with failures within --max-failures; 1 when not, when a device
did not answer in time, or the push could not be made; 2 on usage errors.
The password may also come from $VIGIL_MQTT_PASSWORD (and the user from
$VIGIL_MQTT_USERNAME), so that it is not on the command line.

Flags:
`

func pushModel(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("model push", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o push.Options
	bf := addBrokerFlags(fs)
	fs.StringVar(&o.Device, "device", "", "target device id")
	fs.StringVar(&o.Group, "group", "", "target group (device.group in the devices' configs)")
	fs.StringVar(&o.Model, "model", "default", "name of the model on the devices (models[].name) the bundle replaces")
	fs.StringVar(&o.Via, "via", deploy.ViaChunks, "how the bundle travels: chunks (over MQTT) or url")
	fs.StringVar(&o.URL, "url", "", "with --via url: http(s) URL serving the archive from 'vigil model pack'")
	fs.IntVar(&o.ChunkSize, "chunk-size", deploy.DefaultChunkSize, "bytes per chunk")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "how long to wait for the devices' final phases")
	fs.BoolVar(&o.Rollback, "rollback", false, "ask the devices to return to their previous bundle")
	fs.BoolVar(&o.Shadow, "shadow", false, "run the bundle in shadow beside the model and report agreement, instead of swapping it in")
	fs.BoolVar(&o.Promote, "promote", false, "swap in the candidate a --shadow push left running (no BUNDLE_DIR)")
	fs.BoolVar(&o.DiscardShadow, "discard-shadow", false, "stop and remove the candidate a --shadow push left running (no BUNDLE_DIR)")
	fs.StringVar(&o.Deployment, "deployment", "", "deployment id (default: the time and a random suffix)")
	fs.StringVar(&o.Canary, "canary", "", "staged rollout: N devices or P% of the group first")
	canaryDevices := fs.String("canary-devices", "", "staged rollout: these devices (comma-separated) first, instead of --canary")
	fs.StringVar(&o.Wave, "wave", "", "staged rollout: after the canary, waves of N devices or P% of the group (default: the rest at once)")
	fs.IntVar(&o.MaxFailures, "max-failures", 0, "staged rollout: stop before the next wave when more devices than this failed")
	dryRun := fs.Bool("dry-run", false, "print the plan (waves, devices) and publish nothing")
	fs.Usage = func() { fmt.Fprint(stderr, pushUsage); fs.PrintDefaults() }
	pos, err := parseArgs(fs, args)
	if err != nil {
		return parseExit(err)
	}
	o.TopicPrefix = bf.topicPrefix
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "vigil model push: "+format+"\n\n", a...)
		fs.Usage()
		return exitUsage
	}
	noBundle := o.Rollback || o.Promote || o.DiscardShadow
	switch {
	case o.Shadow && noBundle, o.Rollback && (o.Promote || o.DiscardShadow), o.Promote && o.DiscardShadow:
		return usageErr("--rollback, --shadow, --promote and --discard-shadow go one at a time")
	case noBundle && len(pos) > 0:
		return usageErr("--rollback, --promote and --discard-shadow take no BUNDLE_DIR")
	case !noBundle && len(pos) != 1:
		return usageErr("want one BUNDLE_DIR, got %d", len(pos))
	case bf.broker.URL == "":
		return usageErr("--broker is required")
	case (o.Device == "") == (o.Group == ""):
		return usageErr("give exactly one of --device and --group")
	case o.Via != deploy.ViaChunks && o.Via != deploy.ViaURL:
		return usageErr("--via %q is not chunks or url", o.Via)
	case (o.Via == deploy.ViaURL) != (o.URL != ""):
		return usageErr("--url goes with --via url, and --via url needs --url")
	case o.ChunkSize <= 0 || o.ChunkSize > deploy.MaxChunkSize:
		return usageErr("--chunk-size %d is not between 1 and %d", o.ChunkSize, deploy.MaxChunkSize)
	}
	for _, d := range strings.Split(*canaryDevices, ",") {
		if d = strings.TrimSpace(d); d != "" {
			o.CanaryDevices = append(o.CanaryDevices, d)
		}
	}
	if err := o.CheckStaged(); err != nil {
		return usageErr("%s", strings.TrimPrefix(err.Error(), "push: "))
	}
	if o.Broker, err = bf.resolve(); err != nil {
		fmt.Fprintf(stderr, "vigil model push: %v\n", err)
		return exitUsage
	}
	bundle := ""
	if len(pos) == 1 {
		bundle = pos[0]
	}

	// Ctrl-C stops waiting, but the retained messages are still cleared.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *dryRun {
		plan, err := push.DryRun(ctx, bundle, o)
		if err != nil {
			fmt.Fprintf(stderr, "vigil model push: %v\n", err)
			return exitFailed
		}
		plan.Write(stdout)
		fmt.Fprintln(stderr, "dry run: nothing was published")
		return exitOK
	}

	// One progress printer per wave: each wave sends its own chunks.
	var progress func(sent, total int64)
	newProgress := func() { progress = push.ProgressPrinter(stderr, isTerminal(stderr)) }
	newProgress()
	o.Progress = func(sent, total int64) { progress(sent, total) }
	o.OnWave = func(e push.WaveEvent) {
		if !e.Done {
			newProgress()
			how := "on each device's topics"
			if !e.PerDevice {
				how = "once on the group's topics"
			}
			fmt.Fprintf(stderr, "wave %d of %d%s: %d device(s), published %s: %s\n",
				e.Wave, e.Waves, canaryNote(e.Wave), len(e.Devices), how, strings.Join(e.Devices, " "))
			return
		}
		fmt.Fprintf(stderr, "wave %d of %d done: %d of %d failed; %d failed so far, --max-failures %d\n",
			e.Wave, e.Waves, e.Failed, len(e.Devices), e.Failures, o.MaxFailures)
	}
	var mu sync.Mutex
	last := map[string]deploy.Phase{}
	o.OnState = func(device string, s deploy.State) {
		mu.Lock()
		defer mu.Unlock()
		if last[device] == s.Phase {
			return
		}
		last[device] = s.Phase
		line := fmt.Sprintf("%s: %s", device, s.Phase)
		if s.Error != "" {
			line += ": " + s.Error
		}
		fmt.Fprintln(stderr, line)
	}
	target := "device " + o.Device
	if o.Group != "" {
		target = "group " + o.Group
	}
	fmt.Fprintf(stderr, "pushing %s to %s via %s\n", orNone(bundle), target, o.Via)
	res, err := push.Push(ctx, bundle, o)
	if res != nil {
		fmt.Fprintf(stdout, "deployment %s\n", res.Deployment)
		res.WriteTable(stdout)
		if res.Stopped != "" {
			fmt.Fprintf(stderr, "vigil model push: rollout stopped: %s\n", res.Stopped)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "vigil model push: %v\n", err)
		return exitFailed
	}
	if !res.OK() {
		return exitFailed
	}
	return exitOK
}

func canaryNote(wave int) string {
	if wave == 1 {
		return " (canary)"
	}
	return ""
}

// isTerminal reports whether w is a character device (a terminal), for the progress
// bar.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
