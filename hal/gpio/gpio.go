// Package gpio is the hal driver for GPIO lines, over periph.io: adapters from periph's
// gpio.PinOut and gpio.PinIn to hal.Line and hal.InputLine (doing the active-low
// inversion, so hal only sees logical levels), and OpenOutput/OpenInput, which find a
// line on the Linux GPIO character device (/dev/gpiochip*) by chip and line name or
// offset through periph's gpioioctl. Only agent imports it.
package gpio

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"periph.io/x/conn/v3/gpio"

	"github.com/vigil-edge/vigil/hal"
)

// Driver is the name the hal lines report.
const Driver = "gpio"

// Pull is an input's bias (periph's gpio.Pull), so callers need not import periph.
type Pull = gpio.Pull

// Input biases. PullNoChange leaves what the board or device tree set.
const (
	PullNoChange = gpio.PullNoChange
	Float        = gpio.Float
	PullUp       = gpio.PullUp
	PullDown     = gpio.PullDown
)

type outputLine struct {
	pin       gpio.PinOut
	activeLow bool
	where     string // names the line in errors
}

func (l *outputLine) Driver() string { return Driver }

func (l *outputLine) Out(level hal.Level) error {
	if err := l.pin.Out(electrical(level, l.activeLow)); err != nil {
		return explain(err, l.where)
	}
	return nil
}

func (l *outputLine) Close() error { return release(l.pin) }

func newInputLine(pin gpio.PinIn, activeLow bool, pull Pull, where string) (hal.InputLine, error) {
	if err := pin.In(pull, gpio.BothEdges); err != nil {
		return nil, explain(fmt.Errorf("configure as an input with edge detection: %w", err), where)
	}
	return &inputLine{pin: pin, activeLow: activeLow}, nil
}

type inputLine struct {
	pin       gpio.PinIn
	activeLow bool
}

func (l *inputLine) Driver() string { return Driver }

// Read returns the logical level. periph's PinIn.Read has no error (gpioioctl logs a
// failed read and returns low), so neither has this one.
func (l *inputLine) Read() (hal.Level, error) {
	return hal.Level(bool(l.pin.Read()) != l.activeLow), nil
}

func (l *inputLine) WaitForEdge(timeout time.Duration) bool { return l.pin.WaitForEdge(timeout) }

func (l *inputLine) Close() error { return release(l.pin) }

// electrical maps a logical level to the pin's level.
func electrical(level hal.Level, activeLow bool) gpio.Level {
	return gpio.Level(bool(level) != activeLow)
}

// release gives a pin back to the kernel where periph can: a gpioioctl line's Close
// has no error result; other pins (gpiotest) hold nothing.
func release(pin any) error {
	switch p := pin.(type) {
	case interface{ Close() error }:
		return p.Close()
	case interface{ Close() }:
		p.Close()
	}
	return nil
}

// explain turns the errno behind a periph error into advice. gpioioctl flattens errnos
// into plain strings (errors.New(errno.Error())), so this matches their text too.
func explain(err error, where string) error {
	has := func(errno syscall.Errno) bool {
		return errors.Is(err, errno) || strings.Contains(err.Error(), errno.Error())
	}
	switch {
	case has(syscall.EBUSY):
		return fmt.Errorf("%s is busy: another process or a kernel driver holds it (`gpioinfo` names the consumer); stop it or choose another line: %w", where, err)
	case has(syscall.EACCES), has(syscall.EPERM):
		return fmt.Errorf("%s: permission denied: the user vigil runs as must be in the gpio group (or a udev rule must grant it the chip): %w", where, err)
	case has(syscall.ENODEV), has(syscall.ENXIO):
		return fmt.Errorf("%s: the GPIO chip is gone (adapter unplugged?); restart vigil once it is back: %w", where, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}
