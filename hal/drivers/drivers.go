// Package drivers opens an output's or an input's line by its driver's name, as the
// config gives it (actuators[].driver, inputs[].driver): the one place that knows every
// driver. Today: sim (simulated, in memory) and gpio (a Linux GPIO character device,
// over periph.io).
package drivers

import (
	"errors"

	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/gpio"
	"github.com/vigil-edge/vigil/hal/sim"
)

// Line says which line to open and how.
type Line struct {
	Driver    string // sim | gpio
	Chip      string // gpio: the chip (gpiochip0, or its label)
	Line      string // gpio: the line's name or number
	ActiveLow bool
}

// Output opens an output line. simLine is set for the sim driver, whose history the
// status page shows. A gpio line is opened on first use and reopened (at most once a
// second) while that fails, so an output whose chip is missing is in fault, not fatal,
// and works once the chip is there.
func Output(l Line) (line hal.Line, simLine *sim.Line) {
	if l.Driver == "sim" {
		simLine = sim.New(nil)
		return simLine, simLine
	}
	return hal.Retrying(gpio.Driver, func() (hal.Line, error) {
		return gpio.OpenOutput(l.Chip, l.Line, l.ActiveLow)
	}), nil
}

// Input is Output for inputs.
func Input(l Line) (line hal.InputLine, simIn *sim.Input) {
	if l.Driver == "sim" {
		simIn = sim.NewInput()
		return simIn, simIn
	}
	return hal.RetryingInput(gpio.Driver, func() (hal.InputLine, error) {
		return gpio.OpenInput(l.Chip, l.Line, l.ActiveLow, gpio.PullNoChange)
	}), nil
}

// DriveSafe opens an output's line once, drives it to safe and releases it, without a
// running agent (`vigil safe`, after the agent was killed). A sim line holds nothing
// between processes: there is nothing to drive, and held reports so.
func DriveSafe(l Line, safe hal.Level) (held bool, err error) {
	if l.Driver == "sim" {
		return false, nil
	}
	line, err := gpio.OpenOutput(l.Chip, l.Line, l.ActiveLow)
	if err != nil {
		return true, err
	}
	return true, errors.Join(line.Out(safe), line.Close())
}
