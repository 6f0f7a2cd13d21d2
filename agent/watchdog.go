package agent

import (
	"fmt"
	"time"
)

// DefaultHangAfter is how long one frame may take through detection, rules and
// actions before the pipeline counts as hung. Inference takes milliseconds to a few
// hundred; a minute is beyond any of them, and short against a factory shift.
const DefaultHangAfter = time.Minute

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
