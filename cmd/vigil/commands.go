package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
)

// command is one entry of vigil's command table: a verb that runs, or a group of
// verbs (model, fleet, samples) that has sub-commands instead.
type command struct {
	name    string
	args    string // a sub-command's synopsis after its name: "BUNDLE_DIR --key FILE"
	summary string // its line in 'vigil --help'
	run     func(args []string, stdout, stderr io.Writer) int
	subs    []command
}

// commands is every command of vigil, in the order 'vigil --help' lists them. The
// usage texts and the dispatch are made from it.
func commands() []command {
	return []command{
		{name: "run", summary: "run the agent (embedded defaults when there is no config file)", run: runAgent},
		{name: "check-config", summary: "validate a config file and print every problem", run: checkConfig},
		{name: "safe", summary: "drive every actuator to its safe level and exit (systemd ExecStopPost=)", run: driveSafe},
		{name: "bench", summary: "measure decode, inference and pipeline rates on a camera", run: bench},
		{name: "model", subs: []command{
			{name: "inspect", args: "FILE|BUNDLE_DIR [--json]", summary: "show a model file's or bundle's inputs, outputs and operators", run: inspectModel},
			{name: "eval", args: "BUNDLE_DIR [--images DIR] [--backend NAME] [--json]", summary: "measure a bundle's precision, recall and mAP on labelled images", run: evalModel},
			{name: "sign", args: "BUNDLE_DIR --key FILE", summary: "check a model bundle and sign it (signature.json)", run: signModel},
			{name: "pack", args: "BUNDLE_DIR --out FILE", summary: "write a signed bundle's archive, to serve for 'model push --via url'", run: packModel},
			{name: "push", args: "BUNDLE_DIR --broker URL (--device ID | --group NAME) [flags]", summary: "push a signed bundle to a device or group over MQTT and wait for it", run: pushModel},
		}},
		{name: "keygen", summary: "make an Ed25519 key pair for signing model bundles", run: keygen},
		{name: "fleet", subs: []command{
			{name: "status", args: "--broker URL [--group NAME] [--json] [--watch] [flags]", summary: "every device's status, models, deployment and backlog from the broker", run: fleetStatus},
		}},
		{name: "samples", subs: []command{
			{name: "receive", args: "--out DIR (--broker URL [flags] | --listen ADDR [--token T])", summary: "receive the samples devices upload (MQTT or HTTP) into a directory", run: samplesReceive},
		}},
		{name: "version", summary: "print the version", run: printVersion},
	}
}

const usageHead = `Vigil: an edge vision agent. Cameras in, detections through rules, actuators out,
events kept in a durable outbox; status page and metrics on HTTP.

Usage:
  vigil <command> [flags]

Commands:
`

// usage is 'vigil --help': every command, sub-commands by their full name, with its
// summary.
func usage(cmds []command) string {
	type line struct{ name, summary string }
	var lines []line
	width := 0
	for _, c := range cmds {
		subs := c.subs
		prefix := c.name + " "
		if subs == nil {
			subs, prefix = []command{c}, ""
		}
		for _, s := range subs {
			lines = append(lines, line{prefix + s.name, s.summary})
			width = max(width, len(prefix+s.name))
		}
	}
	var b strings.Builder
	b.WriteString(usageHead)
	for _, l := range lines {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, l.name, l.summary)
	}
	b.WriteString("\nRun 'vigil <command> --help' for a command's flags.\n")
	return b.String()
}

// groupUsage is what 'vigil model' prints: the synopsis of each sub-command.
func groupUsage(group command) string {
	var b strings.Builder
	for i, s := range group.subs {
		lead := "       "
		if i == 0 {
			lead = "Usage: "
		}
		fmt.Fprintf(&b, "%svigil %s %s %s\n", lead, group.name, s.name, s.args)
	}
	fmt.Fprintf(&b, "\nRun 'vigil %s SUBCOMMAND --help' for what one does and its flags.\n", group.name)
	return b.String()
}

// run runs the command args name and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 {
		fmt.Fprint(stderr, usage(cmds))
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage(cmds))
		return exitOK
	}
	c, ok := find(cmds, name)
	if !ok {
		fmt.Fprintf(stderr, "vigil: unknown command %q\n\n%s", name, usage(cmds))
		return exitUsage
	}
	if c.subs == nil {
		return c.run(rest, stdout, stderr)
	}
	if len(rest) == 0 {
		fmt.Fprint(stderr, groupUsage(c))
		return exitUsage
	}
	switch rest[0] {
	case "-h", "--help", "help":
		if len(c.subs) == 1 {
			// A group of one (fleet status, samples receive): its help is the
			// sub-command's, flags and all.
			return c.subs[0].run([]string{"--help"}, stdout, stdout)
		}
		fmt.Fprint(stdout, groupUsage(c))
		return exitOK
	}
	sub, ok := find(c.subs, rest[0])
	if !ok {
		fmt.Fprintf(stderr, "vigil %s: unknown subcommand %q\n\n%s", c.name, rest[0], groupUsage(c))
		return exitUsage
	}
	return sub.run(rest[1:], stdout, stderr)
}

func find(cmds []command, name string) (command, bool) {
	for _, c := range cmds {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func printVersion(_ []string, stdout, _ io.Writer) int {
	fmt.Fprintf(stdout, "vigil %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return exitOK
}
