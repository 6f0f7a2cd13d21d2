package drivers

import (
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/hal"
)

func TestSimLinesAreMemory(t *testing.T) {
	line, sim := Output(Line{Driver: "sim"})
	if sim == nil || line != hal.Line(sim) {
		t.Fatalf("a sim output is not its sim line: %T %v", line, sim)
	}
	if in, simIn := Input(Line{Driver: "sim"}); simIn == nil || in != hal.InputLine(simIn) {
		t.Fatalf("a sim input is not its sim input: %T %v", in, simIn)
	}
	if held, err := DriveSafe(Line{Driver: "sim"}, hal.Low); held || err != nil {
		t.Errorf("DriveSafe on sim: held %v, err %v; want nothing held and no error", held, err)
	}
}

// A gpio line on a chip that is not there is a fault that names it, not a crash: the
// output retries on its next command, and `vigil safe` reports it.
func TestMissingGPIOChipIsAFault(t *testing.T) {
	l := Line{Driver: "gpio", Chip: "vigil-no-such-chip", Line: "7"}
	line, sim := Output(l)
	if sim != nil {
		t.Fatal("a gpio output came with a sim line")
	}
	if err := line.Out(hal.Low); err == nil || !strings.Contains(err.Error(), "vigil-no-such-chip") {
		t.Errorf("driving a missing chip: %v, want an error naming it", err)
	}
	if held, err := DriveSafe(l, hal.Low); !held || err == nil || !strings.Contains(err.Error(), "vigil-no-such-chip") {
		t.Errorf("DriveSafe on a missing chip: held %v, err %v", held, err)
	}
}
