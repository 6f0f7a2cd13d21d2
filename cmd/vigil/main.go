// Command vigil is the Vigil edge vision agent and the operator's tools around it.
// `vigil run` starts the daemon; check-config, safe and bench read the same config;
// `vigil model inspect|eval|sign|pack|push` and `vigil keygen` make, check and deliver
// model bundles; `vigil fleet status` and `vigil samples receive` read what the
// devices send to the broker. commands.go holds the command table, which dispatches
// and prints the usage; each command parses its flags and hands over to the package
// that does the work (agent, infer/modelfile, sync/deploy, sync/deploy/push,
// sync/fleet, sync/upload). This file has the agent's own commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vigil-edge/vigil/agent"
	"github.com/vigil-edge/vigil/agent/config"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // the agent stopped with an error
	exitUsage  = 2 // bad flags or a bad config
)

func newFlags(name, synopsis string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (default "+config.DefaultPath+" if it exists, else the embedded defaults); also $VIGIL_CONFIG")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vigil %s\n\n%s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\nEvery scalar config key can be overridden from the environment as %s_<SECTION>_<KEY>,\ne.g. VIGIL_HTTP_LISTEN=0.0.0.0:8080 or VIGIL_OUTBOX_FSYNC=always.\n", config.EnvPrefix)
	}
	return fs, path
}

func configPath(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	return os.Getenv("VIGIL_CONFIG")
}

func runAgent(args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("run [--config FILE]",
		"Runs the agent until SIGINT or SIGTERM, then drives every actuator to its safe level,\nflushes the outbox and exits 0.", stderr)
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	cfg, ok := loadConfig(configPath(*path), stderr)
	if !ok {
		return exitUsage
	}
	logger := newLogger(cfg.Log, stderr)
	source := cfg.Source
	if source == "" {
		source = "embedded defaults"
	}
	logger.Info("starting vigil", "version", version, "config", source, "device", cfg.Device.ID, "state_dir", cfg.Device.StateDir)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Caught from the start: Go's default for SIGHUP is to exit.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	a, err := agent.New(cfg, agent.Options{Version: version, Logger: logger})
	if err != nil {
		logger.Error("cannot start", "err", err)
		return exitFailed
	}
	// SIGHUP reloads the config file; a bad one is refused and the running config
	// stays. One that comes before the agent runs waits for it.
	go func() {
		for range hup {
			a.ReloadFromFile("SIGHUP")
		}
	}()
	fmt.Fprintf(stdout, "vigil %s: status page on http://%s\n", version, a.Addr())
	if err := a.Run(ctx); err != nil {
		logger.Error("stopped with an error", "err", err)
		return exitFailed
	}
	return exitOK
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("check-config [--config FILE | FILE]",
		"Validates a config (and the environment overrides) and prints every problem, one per line,\nnaming its key. Exits 0 when the config is valid.", stderr)
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	p := configPath(*path)
	if fs.NArg() == 1 && *path == "" {
		p = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	cfg, err := config.Load(p)
	if err != nil {
		printConfigError(stderr, p, err)
		return exitUsage
	}
	source := cfg.Source
	if source == "" {
		source = "embedded defaults"
	}
	fmt.Fprintf(stdout, "%s: OK (%d cameras, %d models, %d actuators, %d rules)\n", source, len(cfg.Cameras), len(cfg.Models), len(cfg.Actuators), len(cfg.Rules))
	return exitOK
}

func driveSafe(args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("safe [--config FILE]",
		"Drives every actuator of the config to its safe level, releases the lines and exits:\nfor systemd's ExecStopPost=, so outputs are safe even after the agent was killed.\nExits 1 if any actuator could not be driven.", stderr)
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	cfg, ok := loadConfig(configPath(*path), stderr)
	if !ok {
		return exitUsage
	}
	err := agent.DriveSafe(cfg, func(actuator, driver, result string) {
		fmt.Fprintf(stdout, "%s (%s): %s\n", actuator, driver, result)
	})
	if err != nil {
		fmt.Fprintf(stderr, "vigil safe: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// loadConfig loads and validates the config at path ("" for the default), printing
// every problem when it is invalid.
func loadConfig(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		printConfigError(stderr, path, err)
		return nil, false
	}
	return cfg, true
}

func printConfigError(w io.Writer, path string, err error) {
	if path == "" {
		path = "embedded defaults"
	}
	var errs config.Errors
	if errors.As(err, &errs) {
		fmt.Fprintf(w, "%s: %d problem(s):\n", path, len(errs))
		for _, e := range errs {
			fmt.Fprintf(w, "  %s\n", e)
		}
		return
	}
	fmt.Fprintf(w, "%v\n", err)
}

func parseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(strings.ToUpper(c.Level)))
	opts := &slog.HandlerOptions{Level: level}
	// Under systemd the journal stamps every line itself ($JOURNAL_STREAM says stderr
	// goes there): a second timestamp is noise in journalctl.
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		}
	}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
