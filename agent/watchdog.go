package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// DefaultHangAfter is how long one frame may take through detection, rules and
// actions before the pipeline counts as hung. Inference takes milliseconds to a few
// hundred; a minute is beyond any of them, and short against a factory shift.
const DefaultHangAfter = time.Minute

// serviceManager tells systemd (Type=notify) that the agent is ready, is stopping, and,
// while the pipeline is healthy, that it is alive (WatchdogSec=). Outside systemd, with
// no $NOTIFY_SOCKET, it does nothing.
type serviceManager struct {
	a        *Agent
	watchdog time.Duration // systemd's WatchdogSec; 0 when not asked for
}

func newServiceManager(a *Agent) *serviceManager {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		a.logger.Warn("systemd watchdog settings unreadable; not pinging", "err", err)
	}
	return &serviceManager{a: a, watchdog: interval}
}

func (s *serviceManager) notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		s.a.logger.Warn("systemd notify failed", "state", state, "err", err)
	}
}

// Run reports ready (the pipelines run: cameras open or retrying, models loaded or
// reported), then pings the watchdog at half its interval for as long as no frame is
// stuck in the pipeline. A hung pipeline stops the pings, so systemd kills and restarts
// the agent (and ExecStopPost drives the outputs safe).
func (s *serviceManager) Run(ctx context.Context) error {
	s.notify(daemon.SdNotifyReady)
	defer s.notify(daemon.SdNotifyStopping)
	if s.watchdog <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(s.watchdog / 2)
	defer t.Stop()
	wasHung := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		hung := s.a.hungPipeline()
		switch {
		case hung == "":
			s.notify(daemon.SdNotifyWatchdog)
		case !wasHung:
			s.a.logger.Error("pipeline hung: watchdog pings stopped, systemd will restart the agent", "problem", hung)
			s.notify("STATUS=" + hung)
		}
		wasHung = hung != ""
	}
}

// hungPipeline names a camera whose frame has been in detection, rules and actions
// for longer than the hang limit, or returns "". It takes no lock a hung frame might
// hold.
func (a *Agent) hungPipeline() string {
	now := time.Now()
	for _, cam := range a.parts().cameras {
		if since := cam.busySince.Load(); since != 0 {
			if busy := now.Sub(time.Unix(0, since)); busy > a.hangAfter {
				return fmt.Sprintf("camera %s: one frame in the pipeline for %v", cam.cfg().Name, busy.Round(time.Second))
			}
		}
	}
	return ""
}
