package fleet

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable prints one line per device: device, group, state, version, models,
// cameras streaming, last deployment, outbox backlog and drift. now dates "offline
// since".
func WriteTable(w io.Writer, devices []Device, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tGROUP\tSTATE\tVERSION\tMODELS\tCAMERAS\tDEPLOYMENT\tOUTBOX\tDRIFT")
	for _, d := range devices {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Device, orDash(d.Group), stateCell(d, now), orDash(d.Version),
			modelsCell(d), camerasCell(d), deploymentCell(d), outboxCell(d), driftCell(d))
	}
	return tw.Flush()
}

// JSON is what --json prints.
type JSON struct {
	Time    time.Time `json:"time"`
	Devices []Device  `json:"devices"`
}

// WriteJSON prints the devices as one line of JSON: {"time", "devices": [...]}.
func WriteJSON(w io.Writer, devices []Device, now time.Time) error {
	b, err := json.Marshal(JSON{Time: now.UTC(), Devices: devices})
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func stateCell(d Device, now time.Time) string {
	if d.State != "offline" {
		return d.State
	}
	var why []string
	if d.Reason != "" {
		why = append(why, d.Reason)
	}
	if d.Since != nil {
		why = append(why, age(now.Sub(*d.Since))+" ago")
	}
	if len(why) == 0 {
		return "offline"
	}
	return "offline (" + strings.Join(why, " ") + ")"
}

// modelsCell is name:version per model, "failed" for one that did not load.
func modelsCell(d Device) string {
	var out []string
	for _, m := range d.Models {
		v := m.Version
		if m.State == "failed" || v == "" {
			v = orDash(m.State)
		}
		out = append(out, m.Name+":"+v)
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

// camerasCell is streaming cameras / cameras.
func camerasCell(d Device) string {
	if len(d.Cameras) == 0 {
		return "-"
	}
	n := 0
	for _, c := range d.Cameras {
		if c.State == "streaming" {
			n++
		}
	}
	return fmt.Sprintf("%d/%d", n, len(d.Cameras))
}

func deploymentCell(d Device) string {
	dep := d.Deployment
	if dep == nil {
		return "-"
	}
	s := string(dep.Phase)
	if dep.Phase == "downloading" {
		s += fmt.Sprintf(" %.0f%%", 100*dep.Progress)
	}
	if dep.Version != "" {
		s += " " + dep.Version
	}
	return s + " (" + dep.ID + ")"
}

func outboxCell(d Device) string {
	if d.Outbox == nil {
		return "-"
	}
	s := fmt.Sprint(d.Outbox.Depth)
	if d.Outbox.OldestS != nil && d.Outbox.Depth > 0 {
		s += " (oldest " + age(time.Duration(*d.Outbox.OldestS)*time.Second) + ")"
	}
	return s
}

func driftCell(d Device) string {
	if d.Drift == nil {
		return "-"
	}
	s := fmt.Sprintf("%.2f", *d.Drift)
	if d.Drifting() {
		s += " drifting"
	}
	return s
}

// age is a duration rounded for a table: 45s, 12m, 3h, 2d.
func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d.Seconds())))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
