package gpio

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"

	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func pinLevel(p *gpiotest.Pin) gpio.Level {
	p.Lock()
	defer p.Unlock()
	return p.L
}

func TestOutputLineInvertsActiveLow(t *testing.T) {
	for _, tc := range []struct {
		activeLow bool
		high, low gpio.Level // electrical levels for logical high and low
	}{
		{false, gpio.High, gpio.Low},
		{true, gpio.Low, gpio.High},
	} {
		pin := &gpiotest.Pin{N: "GPIO17"}
		line := NewOutputLine(pin, tc.activeLow)
		if line.Driver() != "gpio" {
			t.Errorf("driver %q", line.Driver())
		}
		for _, step := range []struct {
			logical    hal.Level
			electrical gpio.Level
		}{{hal.High, tc.high}, {hal.Low, tc.low}, {hal.High, tc.high}} {
			if err := line.Out(step.logical); err != nil {
				t.Fatal(err)
			}
			if got := pinLevel(pin); got != step.electrical {
				t.Errorf("active_low %v: logical %s drove the pin %s, want %s", tc.activeLow, step.logical, got, step.electrical)
			}
		}
		if err := line.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// The common relay board: active low, safe = de-energised = logical low = pin high.
func TestOutputSafeLevelOnActiveLowPin(t *testing.T) {
	pin := &gpiotest.Pin{N: "GPIO17", L: gpio.Low}
	o, err := hal.NewOutput("weld-pause", NewOutputLine(pin, true), hal.OutputOptions{Safe: hal.Low})
	if err != nil {
		t.Fatal(err)
	}
	if pinLevel(pin) != gpio.High {
		t.Fatal("safe low on an active-low pin must drive it electrically high")
	}
	if err := o.Set(hal.High, "rule"); err != nil {
		t.Fatal(err)
	}
	if pinLevel(pin) != gpio.Low {
		t.Fatal("logical high on an active-low pin must drive it electrically low")
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if pinLevel(pin) != gpio.High {
		t.Fatal("Close left an active-low pin energised")
	}
}

func TestInputLineInvertsActiveLow(t *testing.T) {
	for _, tc := range []struct {
		activeLow bool
		pull      Pull
		idle      hal.Level // logical level at rest, from the pull
	}{
		{false, PullDown, hal.Low},
		{true, PullUp, hal.Low}, // a button to ground with a pull-up: released reads low
		{false, PullUp, hal.High},
	} {
		pin := &gpiotest.Pin{N: "GPIO27", EdgesChan: make(chan gpio.Level)}
		line, err := NewInputLine(pin, tc.activeLow, tc.pull)
		if err != nil {
			t.Fatal(err)
		}
		if pin.P != tc.pull {
			t.Errorf("pull %s, want %s", pin.P, tc.pull)
		}
		if got, err := line.Read(); err != nil || got != tc.idle {
			t.Errorf("active_low %v pull %s: idle reads %s (%v), want %s", tc.activeLow, tc.pull, got, err, tc.idle)
		}
		pin.Out(!pinLevel(pin)) // the electrical level flips
		if got, _ := line.Read(); got != !tc.idle {
			t.Errorf("active_low %v pull %s: flipped pin reads %s", tc.activeLow, tc.pull, got)
		}
		line.Close()
	}
}

func TestInputLineNeedsEdgeDetection(t *testing.T) {
	pin := &gpiotest.Pin{N: "GPIO27"} // gpiotest refuses edges without a channel
	if _, err := NewInputLine(pin, false, PullNoChange); err == nil ||
		!strings.Contains(err.Error(), "line GPIO27: configure as an input with edge detection") {
		t.Fatalf("error %v", err)
	}
}

// countingPin counts reads, so a test knows hal.Input has looked at the pin.
type countingPin struct {
	*gpiotest.Pin
	reads atomic.Int64
}

func (p *countingPin) Read() gpio.Level {
	defer p.reads.Add(1)
	return p.Pin.Read()
}

// A button to ground on an active-low pin with a pull-up, debounced by hal.Input, with
// edges delivered through gpiotest's channel.
func TestInputDebouncedThroughHal(t *testing.T) {
	pin := &countingPin{Pin: &gpiotest.Pin{N: "GPIO27", EdgesChan: make(chan gpio.Level)}}
	line, err := NewInputLine(pin, true, PullUp)
	if err != nil {
		t.Fatal(err)
	}
	const window = 50 * time.Millisecond
	clock := testkit.NewClock(time.Unix(1e9, 0))
	changes := make(chan hal.Level, 10)
	in := hal.NewInput("ack", line, hal.InputOptions{
		Debounce: window, Now: clock.Now, MaxWait: 2 * time.Millisecond,
		OnChange: func(_ string, l hal.Level) { changes <- l },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		in.Close()
	}()

	// edge delivers an electrical edge (the send returns once WaitForEdge took it) and
	// waits until Run has read the pin twice more, i.e. finished looking at it.
	edge := func(l gpio.Level) {
		pin.EdgesChan <- l
		settle(t, &pin.reads)
	}
	if in.Level() != hal.Low {
		t.Fatal("a released button must read low")
	}
	edge(gpio.Low) // pressed
	if in.Level() != hal.Low {
		t.Fatal("accepted before the debounce window")
	}
	clock.Advance(window)
	testkit.WaitFor(t, 5*time.Second, "the press", func() bool { return in.Level() == hal.High })

	edge(gpio.High) // bounce: released for 10ms
	clock.Advance(10 * time.Millisecond)
	edge(gpio.Low)
	clock.Advance(time.Hour)
	settle(t, &pin.reads)
	if in.Level() != hal.High {
		t.Fatal("a 10ms bounce was accepted as a release")
	}

	edge(gpio.High) // released for good
	clock.Advance(window)
	testkit.WaitFor(t, 5*time.Second, "the release", func() bool { return in.Level() == hal.Low })
	settle(t, &pin.reads)

	close(changes)
	var got []hal.Level
	for l := range changes {
		got = append(got, l)
	}
	if len(got) != 2 || got[0] != hal.High || got[1] != hal.Low {
		t.Fatalf("OnChange calls %v, want [high low]", got)
	}
	if st := in.State(); st.Changes != 2 || st.State != "low" || st.Driver != "gpio" {
		t.Fatalf("state %+v", st)
	}
}

func settle(t *testing.T, reads *atomic.Int64) {
	t.Helper()
	n := reads.Load()
	testkit.WaitFor(t, 5*time.Second, "two more reads", func() bool { return reads.Load() >= n+2 })
}

// busyPin fails like a gpioioctl line another process holds: gpioioctl flattens the
// errno into a plain string.
type busyPin struct{ *gpiotest.Pin }

var errBusyText = errors.New("GPIOLine.Out(): line_request ioctl: device or resource busy")

func (busyPin) Out(gpio.Level) error { return errBusyText }
func (busyPin) In(gpio.Pull, gpio.Edge) error {
	return errors.New("line_request ioctl: device or resource busy")
}
func (busyPin) Consumer() string                 { return "gpioset" }
func (p busyPin) WaitForEdge(time.Duration) bool { return false }

func TestBusyLineSaysSo(t *testing.T) {
	pin := busyPin{&gpiotest.Pin{N: "GPIO17"}}
	line := &outputLine{pin: pin, where: "gpiochip0 line GPIO17"}
	o, err := hal.NewOutput("weld-pause", line, hal.OutputOptions{Safe: hal.Low})
	if o == nil {
		t.Fatal("no Output")
	}
	defer o.Close()
	for _, want := range []string{"gpiochip0 line GPIO17 is busy: another process or a kernel driver holds it", "device or resource busy"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want it to contain %q", err, want)
		}
	}
	if st := o.State(); st.State != hal.StateFault || !strings.Contains(st.LastError, "is busy") {
		t.Fatalf("state %+v", st)
	}
	if _, err := newInputLine(pin, false, PullUp, "gpiochip0 line GPIO27"); err == nil || !strings.Contains(err.Error(), "gpiochip0 line GPIO27 is busy") {
		t.Fatalf("input error %v", err)
	}
}

func TestExplainPermission(t *testing.T) {
	err := explain(errors.New("line_request ioctl: permission denied"), "gpiochip0 line GPIO17")
	if !strings.Contains(err.Error(), "permission denied: the user vigil runs as must be in the gpio group") {
		t.Fatal(err)
	}
	err = deviceError("gpiochip0", &os.PathError{Op: "open", Path: "/dev/gpiochip0", Err: os.ErrPermission})
	if !strings.Contains(err.Error(), `GPIO chip "gpiochip0": permission denied: the user vigil runs as must be in the gpio group`) {
		t.Fatal(err)
	}
}

type fakeLine struct {
	*gpiotest.Pin
	consumer string
}

func (l fakeLine) Consumer() string { return l.consumer }

type fakeChip struct {
	name, path, label string
	lines             []ioLine
}

func (c *fakeChip) Name() string           { return c.name }
func (c *fakeChip) Path() string           { return c.path }
func (c *fakeChip) Label() string          { return c.label }
func (c *fakeChip) LineCount() int         { return len(c.lines) }
func (c *fakeChip) Line(offset int) ioLine { return c.lines[offset] }

func newFakeChip(name, label string, names ...string) *fakeChip {
	c := &fakeChip{name: name, path: "/dev/" + name, label: label}
	for i, n := range names {
		c.lines = append(c.lines, fakeLine{Pin: &gpiotest.Pin{N: n, Num: i}})
	}
	return c
}

func TestFindLine(t *testing.T) {
	pi := newFakeChip("gpiochip0", "pinctrl-bcm2711", "ID_SDA", "ID_SCL", "GPIO2", "GPIO3", "GPIO4", "GPIO5", "GPIO6",
		"GPIO7", "GPIO8", "GPIO9", "GPIO10", "GPIO11", "GPIO12", "GPIO13", "GPIO14", "GPIO15", "GPIO16", "GPIO17")
	usb := newFakeChip("gpiochip1", "ftdi-cbus", "", "", "7", "")
	chips := []ioChip{pi, usb}
	devices := []string{"/dev/gpiochip0", "/dev/gpiochip1"}
	for _, tc := range []struct {
		chip, line string
		offset     int // of the line found, on want chip
		want       *fakeChip
	}{
		{"gpiochip0", "GPIO17", 17, pi},
		{"/dev/gpiochip0", "GPIO17", 17, pi},
		{"pinctrl-bcm2711", "4", 4, pi},
		{"gpiochip1", "1", 1, usb},
		{"gpiochip1", "7", 2, usb}, // a line named "7" wins over offset 7
	} {
		l, where, err := findLine(chips, devices, tc.chip, tc.line)
		if err != nil {
			t.Errorf("%s %s: %v", tc.chip, tc.line, err)
			continue
		}
		if l != tc.want.lines[tc.offset] {
			t.Errorf("%s %s: found %s", tc.chip, tc.line, l.Name())
		}
		if want := tc.want.name + " line " + tc.line; where != want {
			t.Errorf("named %q, want %q", where, want)
		}
	}

	for _, tc := range []struct {
		chip, line string
		chips      []ioChip
		devices    []string
		want       string
	}{
		{"gpiochip0", "GPIO17", nil, nil,
			`no GPIO chip "gpiochip0": this machine has no GPIO character device (nothing matches /dev/gpiochip*); plug in the GPIO adapter, or use a kernel with CONFIG_GPIO_CDEV`},
		{"gpiochip3", "GPIO17", chips, append(devices, "/dev/gpiochip2"),
			`no GPIO chip "gpiochip3"; chips found: gpiochip0 (/dev/gpiochip0, "pinctrl-bcm2711", 18 lines), gpiochip1 (/dev/gpiochip1, "ftdi-cbus", 4 lines), /dev/gpiochip2 (could not be opened); ` +
				"if you meant the Raspberry Pi 4's header GPIOs, they are gpiochip0 here: use chip: pinctrl-bcm2711, a label that stays the same whatever number the kernel gives the chip"},
		{"gpiochip0", "GPIO99", chips, devices,
			`no line "GPIO99" on GPIO chip gpiochip0 (18 lines, offsets 0..17; lines named ID_SDA, ID_SCL, GPIO2, GPIO3, GPIO4, GPIO5, GPIO6, GPIO7 and 10 more)`},
		{"gpiochip0", "gpio17", chips, devices,
			`no line "gpio17" on GPIO chip gpiochip0; did you mean "GPIO17"? (names are case-sensitive)`},
		{"gpiochip0", "18", chips, devices,
			"line offset 18 is out of range: GPIO chip gpiochip0 has 18 lines (offsets 0..17)"},
		{"gpiochip1", "CBUS0", chips, devices,
			`no line "CBUS0" on GPIO chip gpiochip1 (4 lines, offsets 0..3; lines named 7)`},
		{"gpiochip1", "-1", []ioChip{newFakeChip("gpiochip1", "x", "", "")}, devices,
			`no line "-1" on GPIO chip gpiochip1 (2 lines, offsets 0..1; none of its lines has a name; give an offset)`},
	} {
		_, _, err := findLine(tc.chips, tc.devices, tc.chip, tc.line)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s %s:\n got %v\nwant %s", tc.chip, tc.line, err, tc.want)
		}
	}
}

// The chips gpiodetect lists on Raspberry Pi boards, as reported by their users: a Pi 5
// before kernel 6.6.45, after it, and a Pi 4.
func pi5OldKernel() []ioChip {
	return []ioChip{
		newFakeChip("gpiochip0", "gpio-brcmstb@107d508500", "", ""),
		newFakeChip("gpiochip4", "pinctrl-rp1", "ID_SD", "ID_SC", "GPIO2", "GPIO3", "GPIO4"),
	}
}

func pi5() []ioChip {
	return []ioChip{
		newFakeChip("gpiochip0", "pinctrl-rp1", "ID_SD", "ID_SC", "GPIO2", "GPIO3", "GPIO4"),
		newFakeChip("gpiochip10", "gpio-brcmstb@107d508500", "", ""),
	}
}

func pi4() []ioChip {
	return []ioChip{
		newFakeChip("gpiochip0", "pinctrl-bcm2711", "ID_SDA", "ID_SCL", "GPIO2", "GPIO3", "GPIO4"),
		newFakeChip("gpiochip1", "raspberrypi-exp-gpio", "BT_ON", "WL_ON"),
	}
}

func devicesOf(chips []ioChip) []string {
	var d []string
	for _, c := range chips {
		d = append(d, c.Path())
	}
	return d
}

// A label selects the chip whatever its number; a chip that is not there is an error
// that lists the chips present and, on a Raspberry Pi, names the label to write.
func TestFindChipByBoardLabel(t *testing.T) {
	for _, chips := range [][]ioChip{pi5OldKernel(), pi5()} {
		l, where, err := findLine(chips, devicesOf(chips), "pinctrl-rp1", "GPIO4")
		if err != nil || l.Name() != "GPIO4" {
			t.Fatalf("pinctrl-rp1 GPIO4: %v", err)
		}
		var rp1 string
		for _, c := range chips {
			if c.Label() == "pinctrl-rp1" {
				rp1 = c.Name()
			}
		}
		if want := rp1 + " line GPIO4"; where != want {
			t.Errorf("named %q, want %q", where, want)
		}
	}

	for _, tc := range []struct {
		name  string
		chips []ioChip
		chip  string
		want  string
	}{
		{"a Pi 4 config on a Pi 5", pi5(), "pinctrl-bcm2711",
			`no GPIO chip "pinctrl-bcm2711"; chips found: gpiochip0 (/dev/gpiochip0, "pinctrl-rp1", 5 lines), gpiochip10 (/dev/gpiochip10, "gpio-brcmstb@107d508500", 2 lines); ` +
				"pinctrl-bcm2711 is the Raspberry Pi 4's GPIO chip; this board has pinctrl-rp1 (Raspberry Pi 5, gpiochip0 here): use chip: pinctrl-rp1"},
		{"a Pi 5 config on a Pi 4", pi4(), "pinctrl-rp1",
			`no GPIO chip "pinctrl-rp1"; chips found: gpiochip0 (/dev/gpiochip0, "pinctrl-bcm2711", 5 lines), gpiochip1 (/dev/gpiochip1, "raspberrypi-exp-gpio", 2 lines); ` +
				"pinctrl-rp1 is the Raspberry Pi 5's GPIO chip; this board has pinctrl-bcm2711 (Raspberry Pi 4, gpiochip0 here): use chip: pinctrl-bcm2711"},
		{"an old Pi 5 number on a newer kernel", pi5(), "gpiochip4",
			`no GPIO chip "gpiochip4"; chips found: gpiochip0 (/dev/gpiochip0, "pinctrl-rp1", 5 lines), gpiochip10 (/dev/gpiochip10, "gpio-brcmstb@107d508500", 2 lines); ` +
				"if you meant the Raspberry Pi 5's header GPIOs, they are gpiochip0 here: use chip: pinctrl-rp1, a label that stays the same whatever number the kernel gives the chip"},
		{"a Pi label on a machine with no Pi chip", []ioChip{newFakeChip("gpiochip0", "vigil-loop", "OUT0", "IN0")}, "pinctrl-bcm2711",
			`no GPIO chip "pinctrl-bcm2711"; chips found: gpiochip0 (/dev/gpiochip0, "vigil-loop", 2 lines); ` +
				"pinctrl-bcm2711 is the Raspberry Pi 4's GPIO chip and this machine has no Raspberry Pi GPIO chip: use one of the chips found"},
		{"nothing to add off a Pi", []ioChip{newFakeChip("gpiochip0", "ftdi-cbus", "")}, "gpiochip3",
			`no GPIO chip "gpiochip3"; chips found: gpiochip0 (/dev/gpiochip0, "ftdi-cbus", 1 lines)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := findLine(tc.chips, devicesOf(tc.chips), tc.chip, "GPIO17")
			if err == nil || err.Error() != tc.want {
				t.Errorf("\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

// A device that exists but that periph did not list was plugged in after the scan.
func TestFindLineOnDeviceAddedLater(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "gpiochip5")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := findLine(nil, []string{dev}, dev, "GPIO17")
	if err == nil || !strings.Contains(err.Error(), "appeared after vigil scanned the GPIO chips; restart vigil") {
		t.Fatalf("error %v", err)
	}
	// A symlinked alias of a listed chip is that chip.
	chip := newFakeChip("gpiochip5", "usb")
	chip.path = dev
	chip.lines = append(chip.lines, fakeLine{Pin: &gpiotest.Pin{N: "GPIO17"}})
	alias := filepath.Join(t.TempDir(), "gpiochip9")
	if err := os.Symlink(dev, alias); err != nil {
		t.Fatal(err)
	}
	if l, _, err := findLine([]ioChip{chip}, []string{dev, alias}, alias, "GPIO17"); err != nil || l != chip.lines[0] {
		t.Fatalf("alias: %v", err)
	}
}

func TestOpenOnThisMachine(t *testing.T) {
	if devices, _ := filepath.Glob(DeviceGlob); len(devices) > 0 {
		t.Skipf("this machine has GPIO chips %v; the no-chip error is checked on machines without", devices)
	}
	const want = `no GPIO chip "gpiochip0": this machine has no GPIO character device (nothing matches /dev/gpiochip*); plug in the GPIO adapter, or use a kernel with CONFIG_GPIO_CDEV`
	if _, err := OpenOutput("gpiochip0", "GPIO17", false); err == nil || err.Error() != want {
		t.Errorf("OpenOutput: %v", err)
	}
	if _, err := OpenInput("/dev/gpiochip0", "27", true, PullUp); err == nil || !strings.Contains(err.Error(), "this machine has no GPIO character device") {
		t.Errorf("OpenInput: %v", err)
	}
	periph.mu.Lock()
	done := periph.done
	periph.mu.Unlock()
	if done {
		t.Error("periph was initialised with no chip present: a chip plugged in later could never be found")
	}
}

// On a machine with a GPIO chip whose line may be driven (a board on the bench),
// VIGIL_GPIO_TEST_CHIP and VIGIL_GPIO_TEST_LINE name an output line to drive.
func TestRealChip(t *testing.T) {
	chip, line := os.Getenv("VIGIL_GPIO_TEST_CHIP"), os.Getenv("VIGIL_GPIO_TEST_LINE")
	if chip == "" || line == "" {
		t.Skip("SKIPPED: no GPIO hardware to drive here (this kernel has no GPIO character device). " +
			"The real character-device tests run in a QEMU VM with a fake chip: make vmtest (vm_test.go); " +
			"set VIGIL_GPIO_TEST_CHIP and VIGIL_GPIO_TEST_LINE to a line that is safe to toggle to run this on a board")
	}
	l, err := OpenOutput(chip, line, false)
	if err != nil {
		t.Fatal(err)
	}
	o, err := hal.NewOutput("test", l, hal.OutputOptions{Safe: hal.Low})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Set(hal.High, "test"); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
}
