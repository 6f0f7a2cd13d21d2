package gpio

import (
	"periph.io/x/conn/v3/gpio"

	"github.com/vigil-edge/vigil/hal"
)

// NewOutputLine adapts a periph output pin to hal.Line. With activeLow, logical high
// drives the pin electrically low and logical low drives it high. Close releases the
// pin if it can be released (a gpioioctl line), without driving it.
func NewOutputLine(pin gpio.PinOut, activeLow bool) hal.Line {
	return &outputLine{pin: pin, activeLow: activeLow, where: "line " + pin.Name()}
}

// NewInputLine configures a periph pin as an input with pull and edge detection on both
// edges, and adapts it to hal.InputLine. With activeLow, an electrically low pin reads
// as logical high.
func NewInputLine(pin gpio.PinIn, activeLow bool, pull Pull) (hal.InputLine, error) {
	return newInputLine(pin, activeLow, pull, "line "+pin.Name())
}
