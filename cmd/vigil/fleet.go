package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vigil-edge/vigil/sync/fleet"
)

const fleetStatusUsage = `Usage: vigil fleet status --broker URL [--group NAME] [--json] [--watch] [flags]

Shows every device from its retained <prefix>/<device>/status and models/state on
the broker: state (online, or offline with why and since when), group, agent version,
models (name:version), cameras streaming, last model deployment (phase, version, id),
outbox backlog (messages not yet delivered, and the age of the oldest) and the highest
drift score. The devices refresh their status while connected when any of it changes,
at most once per mqtt.telemetry_interval.

--json prints {"time", "devices": [...]} on one line. --watch keeps the view live:
redrawn on a terminal, or printed again (one JSON line per update with --json) as
statuses change, until Ctrl-C.

Exit status 0 when at least one device was found (always 0 for --watch stopped by
Ctrl-C), 1 when none was or the broker could not be read, 2 on usage errors. The
password may also come from $VIGIL_MQTT_PASSWORD (and the user from
$VIGIL_MQTT_USERNAME).

Flags:
`

func fleetStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleet status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bf := addBrokerFlags(fs)
	group := fs.String("group", "", "only the devices of this group (device.group in their configs)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	watch := fs.Bool("watch", false, "keep the view live until Ctrl-C")
	interval := fs.Duration("interval", time.Second, "with --watch: the least time between two updates")
	fs.Usage = func() { fmt.Fprint(stderr, fleetStatusUsage); fs.PrintDefaults() }
	pos, err := parseArgs(fs, args)
	if err != nil {
		return parseExit(err)
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "vigil fleet status: "+format+"\n\n", a...)
		fs.Usage()
		return exitUsage
	}
	switch {
	case len(pos) > 0:
		return usageErr("unexpected argument %q", pos[0])
	case bf.broker.URL == "":
		return usageErr("--broker is required")
	case *interval <= 0:
		return usageErr("--interval %v must be greater than 0", *interval)
	}
	broker, err := bf.resolve()
	if err != nil {
		fmt.Fprintf(stderr, "vigil fleet status: %v\n", err)
		return exitUsage
	}
	opts := fleet.Options{
		Broker: broker, TopicPrefix: bf.topicPrefix, Group: *group, Interval: *interval,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	write := func(devices []fleet.Device) {
		if *asJSON {
			fleet.WriteJSON(stdout, devices, time.Now())
			return
		}
		fleet.WriteTable(stdout, devices, time.Now())
	}
	if !*watch {
		devices, err := fleet.Snapshot(ctx, opts)
		if err != nil {
			fmt.Fprintf(stderr, "vigil fleet status: %v\n", err)
			return exitFailed
		}
		write(devices)
		if len(devices) == 0 {
			fmt.Fprintf(stderr, "vigil fleet status: %s\n", noDevice(opts))
			return exitFailed
		}
		return exitOK
	}
	tty := !*asJSON && isTerminal(stdout)
	err = fleet.Watch(ctx, opts, func(devices []fleet.Device) {
		switch {
		case tty:
			fmt.Fprint(stdout, "\033[H\033[2J") // home and clear: redraw in place
			fmt.Fprintf(stdout, "%s  %d devices  (Ctrl-C to stop)\n\n", time.Now().Format(time.TimeOnly), len(devices))
		case !*asJSON:
			fmt.Fprintf(stdout, "\n# %s: %d devices\n", time.Now().UTC().Format(time.RFC3339), len(devices))
		}
		write(devices)
		if len(devices) == 0 && !*asJSON {
			fmt.Fprintf(stdout, "(%s)\n", noDevice(opts))
		}
	})
	if err != nil {
		fmt.Fprintf(stderr, "vigil fleet status: %v\n", err)
		return exitFailed
	}
	return exitOK
}

func noDevice(o fleet.Options) string {
	prefix := o.TopicPrefix
	if prefix == "" {
		prefix = "vigil"
	}
	if o.Group != "" {
		return fmt.Sprintf("no device of group %s: no retained %s/+/status says \"group\": %q", o.Group, prefix, o.Group)
	}
	return fmt.Sprintf("no device: no retained %s/+/status or models/state on the broker", prefix)
}
