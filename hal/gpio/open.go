package gpio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"periph.io/x/conn/v3/driver/driverreg"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/host/v3/gpioioctl"

	"github.com/vigil-edge/vigil/hal"
)

// DeviceGlob is where the Linux GPIO character devices are. periph's gpioioctl scans
// exactly this; it is not a setting because periph's is not.
const DeviceGlob = "/dev/gpiochip*"

// OpenOutput finds line (a line name such as GPIO17, or a numeric offset on the chip)
// on chip (a chip name such as gpiochip0, its path /dev/gpiochip0, or its label) and
// returns it as an output. It does not drive the line: hal.NewOutput drives the safe
// level first thing, and that first drive is when the kernel hands the line over, so a
// line held by another process fails there with an error that says so.
//
// Known limit of gpioioctl: its first drive requests the line as an output without an
// initial value, so the kernel drives it low for the microseconds before the requested
// level is written. Wire an output so that this cannot matter (see docs/hardware.md, "Wiring
// outputs").
func OpenOutput(chip, line string, activeLow bool) (hal.Line, error) {
	l, where, err := openLine(chip, line)
	if err != nil {
		return nil, err
	}
	return &outputLine{pin: l, activeLow: activeLow, where: where}, nil
}

// OpenInput finds a line like OpenOutput and configures it as an input with pull and
// edge detection on both edges; a line held by another process fails here.
func OpenInput(chip, line string, activeLow bool, pull Pull) (hal.InputLine, error) {
	l, where, err := openLine(chip, line)
	if err != nil {
		return nil, err
	}
	return newInputLine(l, activeLow, pull, where)
}

// ioLine is what the lookup needs of a line: gpioioctl's GPIOLine, or a test's.
type ioLine interface {
	gpio.PinIO
	Consumer() string
}

// ioChip is what the lookup needs of a chip.
type ioChip interface {
	Name() string
	Path() string
	Label() string
	LineCount() int
	Line(offset int) ioLine // 0 <= offset < LineCount()
}

type ioctlChip struct{ c *gpioioctl.GPIOChip }

func (c ioctlChip) Name() string           { return c.c.Name() }
func (c ioctlChip) Path() string           { return c.c.Path() }
func (c ioctlChip) Label() string          { return c.c.Label() }
func (c ioctlChip) LineCount() int         { return c.c.LineCount() }
func (c ioctlChip) Line(offset int) ioLine { return c.c.Lines()[offset] }

func openLine(chip, line string) (ioLine, string, error) {
	devices, _ := filepath.Glob(DeviceGlob) // the pattern is valid: no error
	if err := initPeriph(len(devices) > 0); err != nil {
		return nil, "", err
	}
	var chips []ioChip
	for _, c := range gpioioctl.Chips {
		chips = append(chips, ioctlChip{c})
	}
	return findLine(chips, devices, chip, line)
}

// periph keeps its driver registry (driverreg) and the chips gpioioctl found
// (gpioioctl.Chips) in package variables, filled by the first driverreg.Init of the
// process; later calls return that first result. So this package initialises periph
// from this one place. It is not a plain sync.Once because an Init that finds no chip
// would fix "no chips" for the life of the process: it waits until a /dev/gpiochip*
// exists, so an adapter plugged in after start (hal.Retrying) is found. A chip that
// appears after that first Init still needs a restart, since periph cannot rescan.
//
// This imports gpioioctl alone and calls driverreg.Init rather than host.Init, which
// would also load periph's SoC drivers (bcm283x over /dev/gpiomem, sysfs GPIO, ...).
var periph struct {
	mu   sync.Mutex // guards the fields below
	done bool
	err  error
}

func initPeriph(devicesExist bool) error {
	periph.mu.Lock()
	defer periph.mu.Unlock()
	if periph.done {
		return periph.err
	}
	if !devicesExist {
		return nil // nothing to find yet; findLine says so
	}
	periph.done = true
	state, err := driverreg.Init()
	if err != nil {
		periph.err = fmt.Errorf("initialise periph's GPIO driver: %w", err)
		return periph.err
	}
	for _, f := range state.Failed {
		periph.err = fmt.Errorf("periph's GPIO driver %s failed: %w", f.D, f.Err)
	}
	return periph.err
}

// findLine picks the chip and line among chips, by name, device path or label (a label,
// pinctrl-rp1 say, selects the chip whatever number the kernel gave it); devices are
// the /dev/gpiochip* paths present, for the errors. It returns the line and how to name it in messages.
func findLine(chips []ioChip, devices []string, chip, line string) (ioLine, string, error) {
	var c ioChip
	for _, cand := range chips {
		if cand.Name() == chip || cand.Label() == chip || samePath(cand.Path(), devicePath(chip)) {
			c = cand
			break
		}
	}
	if c == nil {
		return nil, "", noSuchChip(chips, devices, chip)
	}
	where := fmt.Sprintf("%s line %s", c.Name(), line)
	n := c.LineCount()
	// A name first: some boards name lines with digits.
	for i := range n {
		if l := c.Line(i); l.Name() == line {
			return l, where, nil
		}
	}
	if off, err := strconv.Atoi(line); err == nil && off >= 0 && strings.TrimLeft(line, "0123456789") == "" {
		if off >= n {
			return nil, "", fmt.Errorf("line offset %d is out of range: GPIO chip %s has %d lines (offsets 0..%d)", off, c.Name(), n, n-1)
		}
		return c.Line(off), where, nil
	}
	return nil, "", noSuchLine(c, line)
}

// devicePath is where chip's device is: chip itself if it is a path.
func devicePath(chip string) string {
	if strings.Contains(chip, "/") {
		return chip
	}
	return "/dev/" + chip
}

// samePath reports whether two device paths name the same device, through symlinks: a
// Raspberry Pi 5 links gpiochip4 to gpiochip0, and periph lists the chip once.
func samePath(a, b string) bool {
	if a == b {
		return true
	}
	ra, errA := filepath.EvalSymlinks(a)
	rb, errB := filepath.EvalSymlinks(b)
	return errA == nil && errB == nil && ra == rb
}

func noSuchChip(chips []ioChip, devices []string, chip string) error {
	path := devicePath(chip)
	for _, d := range devices {
		if d != path {
			continue
		}
		// The device exists but periph did not list it: say why.
		f, err := os.Open(path)
		if err != nil {
			return deviceError(chip, err)
		}
		f.Close()
		return fmt.Errorf("GPIO chip %q (%s) appeared after vigil scanned the GPIO chips; restart vigil to use it (periph scans once per process)", chip, path)
	}
	if len(chips) == 0 && len(devices) == 0 {
		return fmt.Errorf("no GPIO chip %q: this machine has no GPIO character device (nothing matches %s); plug in the GPIO adapter, or use a kernel with CONFIG_GPIO_CDEV", chip, DeviceGlob)
	}
	var found []string
	listed := map[string]bool{}
	for _, c := range chips {
		found = append(found, fmt.Sprintf("%s (%s, %q, %d lines)", c.Name(), c.Path(), c.Label(), c.LineCount()))
		listed[c.Path()] = true
	}
	for _, d := range devices {
		if !listed[d] {
			found = append(found, d+" (could not be opened)")
		}
	}
	msg := fmt.Sprintf("no GPIO chip %q; chips found: %s", chip, strings.Join(found, ", "))
	if hint := boardHint(chips, chip); hint != "" {
		msg += "; " + hint
	}
	return errors.New(msg)
}

// deviceError explains why a chip's device could not be opened.
func deviceError(chip string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("GPIO chip %q: permission denied: the user vigil runs as must be in the gpio group (the packaged service is), or a udev rule must grant it the device: %w", chip, err)
	}
	return fmt.Errorf("GPIO chip %q: %w", chip, err)
}

func noSuchLine(c ioChip, line string) error {
	n := c.LineCount()
	var names []string
	for i := range n {
		name := c.Line(i).Name()
		if strings.EqualFold(name, line) {
			return fmt.Errorf("no line %q on GPIO chip %s; did you mean %q? (names are case-sensitive)", line, c.Name(), name)
		}
		if name != "" && name != "-" && name != "_" {
			names = append(names, name)
		}
	}
	const few = 8
	var have string
	switch {
	case len(names) == 0:
		have = "none of its lines has a name; give an offset"
	case len(names) <= few:
		have = "lines named " + strings.Join(names, ", ")
	default:
		have = "lines named " + strings.Join(names[:few], ", ") + fmt.Sprintf(" and %d more", len(names)-few)
	}
	return fmt.Errorf("no line %q on GPIO chip %s (%d lines, offsets 0..%d; %s)", line, c.Name(), n, n-1, have)
}
