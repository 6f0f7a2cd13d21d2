//go:build vmtest

// Hardware-in-the-loop tests: run by scripts/vmtest inside a QEMU VM whose kernel has
// the vigil-gpio-loopback chip (scripts/vmtest.d/gpio-loopback): outputs OUT0..OUT3
// wired to inputs IN0..IN3, with edge interrupts. Built only with -tags vmtest; without
// the chip they fail, since under this tag the chip is the point.

package gpio

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"periph.io/x/host/v3/gpioioctl"

	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/internal/testkit"
)

// loopChip is the label of the fake chip the VM loads.
const loopChip = "vigil-loop"

func openLoop(t *testing.T, out, in string, outActiveLow bool) (hal.Line, hal.InputLine) {
	t.Helper()
	o, err := OpenOutput(loopChip, out, outActiveLow)
	if err != nil {
		t.Fatalf("the vigil-loop GPIO chip must be loaded (scripts/vmtest does it): %v", err)
	}
	i, err := OpenInput(loopChip, in, false, PullNoChange)
	if err != nil {
		o.Close()
		t.Fatalf("open %s: %v", in, err)
	}
	return o, i
}

// read reads the looped-back input.
func read(t *testing.T, in hal.InputLine) hal.Level {
	t.Helper()
	l, err := in.Read()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// An output drives the real line: the safe level at start, each Set, and the safe level
// again on Close, as the looped-back input reads them; every change raises an edge
// that the kernel delivers to the input's line request.
func TestVMOutputLevelsAndEdges(t *testing.T) {
	for _, safe := range []hal.Level{hal.Low, hal.High} {
		line, in := openLoop(t, "OUT0", "IN0", false)
		o, err := hal.NewOutput("relay", line, hal.OutputOptions{Safe: safe})
		if err != nil {
			t.Fatal(err)
		}
		if got := read(t, in); got != safe {
			t.Fatalf("safe %s: the line reads %s right after NewOutput", safe, got)
		}
		for _, level := range []hal.Level{!safe, safe, !safe} {
			if err := o.Set(level, "test"); err != nil {
				t.Fatal(err)
			}
			if !in.WaitForEdge(5 * time.Second) {
				t.Fatalf("safe %s: no edge on IN0 within 5s after driving OUT0 %s", safe, level)
			}
			if got := read(t, in); got != level {
				t.Fatalf("safe %s: drove %s, IN0 reads %s", safe, level, got)
			}
		}
		if err := o.Close(); err != nil { // at the unsafe level: Close must drive safe
			t.Fatal(err)
		}
		if got := read(t, in); got != safe {
			t.Fatalf("safe %s: after Close the line reads %s", safe, got)
		}
		if st := o.State(); st.State != safe.String() || st.Transitions != 4 {
			t.Errorf("state after close: %+v", st)
		}
		in.Close()
	}
}

// active_low inverts on the wire: logical high on OUT1 reads electrically low on IN1.
func TestVMOutputActiveLow(t *testing.T) {
	line, in := openLoop(t, "OUT1", "IN1", true)
	defer in.Close()
	o, err := hal.NewOutput("relay", line, hal.OutputOptions{Safe: hal.Low})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if got := read(t, in); got != hal.High {
		t.Fatalf("active-low safe low must drive the wire high; IN1 reads %s", got)
	}
	if err := o.Set(hal.High, "test"); err != nil {
		t.Fatal(err)
	}
	if !in.WaitForEdge(5*time.Second) || read(t, in) != hal.Low {
		t.Fatal("active-low logical high must drive the wire low")
	}
}

// changes records an Input's accepted changes.
type changes struct {
	mu     sync.Mutex
	levels []hal.Level
}

func (c *changes) add(_ string, l hal.Level) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.levels = append(c.levels, l)
}

func (c *changes) get() []hal.Level {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]hal.Level(nil), c.levels...)
}

// A pulse of the output reaches a debounced hal.Input through the kernel's edge events
// as exactly one press and one release; a glitch shorter than the debounce window (two
// drives microseconds apart) is not a change.
func TestVMPulseAndDebounceThroughInput(t *testing.T) {
	line, inLine := openLoop(t, "OUT2", "IN2", false)
	o, err := hal.NewOutput("relay", line, hal.OutputOptions{Safe: hal.Low})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	var seen changes
	in := hal.NewInput("button", inLine, hal.InputOptions{Debounce: 30 * time.Millisecond, OnChange: seen.add})
	if in.Level() != hal.Low {
		t.Fatalf("the input starts at %s; the output drove low", in.Level())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; in.Close() }()

	// A glitch: high and straight back to low, far shorter than 30ms.
	if err := line.Out(hal.High); err != nil {
		t.Fatal(err)
	}
	if err := line.Out(hal.Low); err != nil {
		t.Fatal(err)
	}
	// A pulse ten times the debounce window.
	if err := o.Pulse(300*time.Millisecond, "test"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the pulse's press and release", func() bool { return len(seen.get()) >= 2 })
	if got := seen.get(); len(got) != 2 || got[0] != hal.High || got[1] != hal.Low {
		t.Fatalf("changes %v, want [high low]: the glitch must not count and the pulse must count once", got)
	}
	if st := in.State(); st.State != "low" || st.Changes != 2 || st.Driver != "gpio" {
		t.Errorf("input state %+v", st)
	}
}

// A chip is found by its label whatever number the kernel gave it, and by that number;
// a Raspberry Pi 4's label on this machine (a config written for another board) is an
// error that names the chip that is here, and the output that asked for it stays in
// fault while another output on the real chip works.
func TestVMChipByLabel(t *testing.T) {
	l, err := OpenOutput(loopChip, "OUT3", false) // initialises periph if no test did
	if err != nil {
		t.Fatalf("open %s OUT3: %v", loopChip, err)
	}
	l.Close()
	var name string
	for _, c := range gpioioctl.Chips {
		if c.Label() == loopChip {
			name = c.Name()
		}
	}
	if name == "" {
		t.Fatalf("no chip labelled %s among periph's chips", loopChip)
	}
	for _, chip := range []string{name, "/dev/" + name} {
		l, err := OpenOutput(chip, "OUT3", false)
		if err != nil {
			t.Fatalf("open %s OUT3: %v", chip, err)
		}
		l.Close()
	}

	_, err = OpenOutput("pinctrl-bcm2711", "GPIO17", false)
	for _, want := range []string{
		`no GPIO chip "pinctrl-bcm2711"; chips found: `,
		fmt.Sprintf(`%s (/dev/%s, "vigil-loop", 8 lines)`, name, name),
		"pinctrl-bcm2711 is the Raspberry Pi 4's GPIO chip and this machine has no Raspberry Pi GPIO chip: use one of the chips found",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want it to contain %q", err, want)
		}
	}

	wrong, err := hal.NewOutput("pi4-relay", hal.Retrying(Driver, func() (hal.Line, error) {
		return OpenOutput("pinctrl-bcm2711", "GPIO17", false)
	}), hal.OutputOptions{Safe: hal.Low})
	if err == nil || wrong == nil {
		t.Fatalf("NewOutput on a missing chip: %v", err)
	}
	defer wrong.Close()
	if st := wrong.State(); st.State != hal.StateFault || !strings.Contains(st.LastError, "vigil-loop") {
		t.Fatalf("pi4-relay state %+v, want fault naming vigil-loop", st)
	}
	line, in := openLoop(t, "OUT3", "IN3", false)
	defer in.Close()
	o, err := hal.NewOutput("relay", line, hal.OutputOptions{Safe: hal.Low})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := o.Set(hal.High, "test"); err != nil {
		t.Fatal(err)
	}
	if !in.WaitForEdge(5*time.Second) || read(t, in) != hal.High {
		t.Fatal("the relay on vigil-loop must work beside the one in fault")
	}
}
