// Package sdnotify speaks systemd's notify protocol for a Type=notify service: ready,
// stopping, and the watchdog's pings while the service is healthy. Outside systemd (no
// $NOTIFY_SOCKET) it does nothing.
package sdnotify

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Run reports ready, then pings the watchdog (WatchdogSec=) at half its interval for as
// long as problem returns "". A problem stops the pings, so that systemd kills and
// restarts the service, and is sent as its STATUS= once. Stopping is reported when ctx
// ends.
func Run(ctx context.Context, problem func() string, logger *slog.Logger) error {
	notify := func(state string) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			logger.Warn("systemd notify failed", "state", state, "err", err)
		}
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		logger.Warn("systemd watchdog settings unreadable; not pinging", "err", err)
	}
	notify(daemon.SdNotifyReady)
	defer notify(daemon.SdNotifyStopping)
	if interval <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		p := problem()
		switch {
		case p == "":
			notify(daemon.SdNotifyWatchdog)
		case !failing:
			logger.Error("unhealthy: watchdog pings stopped, systemd will restart the service", "problem", p)
			notify("STATUS=" + p)
		}
		failing = p != ""
	}
}
