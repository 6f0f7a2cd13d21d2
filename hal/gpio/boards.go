package gpio

import (
	"fmt"
	"strings"
)

// boardChip is a GPIO chip whose label names the board it belongs to: the chip that
// drives a Raspberry Pi's 40-pin header. Its number changes between kernels (a Pi 5's
// was gpiochip4 before kernel 6.6.45, gpiochip0 after, and has been reported higher
// since), its label does not, so the label is what a config should name.
type boardChip struct {
	label string
	model string // the boards that have it
}

// boardChips are the labels the Raspberry Pi kernels give the header's chip (gpiodetect
// lists them in brackets). A Pi 400 and a CM4 have the Pi 4's chip, a Pi 500 and a CM5
// the Pi 5's. None of this has been seen on a real board here (docs/hardware.md).
var boardChips = []boardChip{
	{"pinctrl-bcm2835", "Raspberry Pi 1, 2, 3 or Zero"},
	{"pinctrl-bcm2711", "Raspberry Pi 4"},
	{"pinctrl-rp1", "Raspberry Pi 5"},
}

func boardChipByLabel(label string) (boardChip, bool) {
	for _, b := range boardChips {
		if b.label == label {
			return b, true
		}
	}
	return boardChip{}, false
}

// boardHint says what to write instead of a chip that was not found, when that can be
// told from the chips present: a known board's chip on another board, or a chip number
// on a board whose header chip has a label. "" when there is nothing to add.
func boardHint(chips []ioChip, missing string) string {
	var here []string // "pinctrl-rp1 (Raspberry Pi 5, gpiochip0 here)"
	var use, model, name string
	for _, c := range chips {
		if b, ok := boardChipByLabel(c.Label()); ok {
			here = append(here, fmt.Sprintf("%s (%s, %s here)", b.label, b.model, c.Name()))
			if use == "" {
				use, model, name = b.label, b.model, c.Name()
			}
		}
	}
	wanted, isBoard := boardChipByLabel(missing)
	switch {
	case isBoard && use != "":
		return fmt.Sprintf("%s is the %s's GPIO chip; this board has %s: use chip: %s",
			missing, wanted.model, strings.Join(here, ", "), use)
	case isBoard:
		return fmt.Sprintf("%s is the %s's GPIO chip and this machine has no Raspberry Pi GPIO chip: use one of the chips found",
			missing, wanted.model)
	case use != "":
		// The chip may be an adapter that is not plugged in: only a suggestion.
		return fmt.Sprintf("if you meant the %s's header GPIOs, they are %s here: use chip: %s, a label that stays the same whatever number the kernel gives the chip",
			model, name, use)
	}
	return ""
}
