package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem in a config, at a key path such as cameras[0].detect_fps.
type Error struct {
	Key string
	Msg string
}

func (e Error) Error() string {
	if e.Key == "" {
		return e.Msg
	}
	return e.Key + ": " + e.Msg
}

// Errors are all the problems found in one config, one per line.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es Errors) sort() {
	slices.SortStableFunc(es, func(a, b Error) int { return strings.Compare(a.Key, b.Key) })
}

// ByteSize is a size in bytes, written as 1048576, "512KiB", "256MiB", "1GiB" (or the
// decimal KB, MB, GB).
type ByteSize int64

var byteUnits = []struct {
	suffix string
	factor int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// ParseByteSize reads a size such as "256MiB".
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	factor := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, factor = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.factor
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size; write it like 256MiB, 512KiB or 1GiB", s)
	}
	return ByteSize(n * float64(factor)), nil
}

func (b ByteSize) String() string {
	for _, u := range byteUnits[:4] {
		if int64(b) >= u.factor && int64(b)%u.factor == 0 && int64(b)/u.factor < 1024 {
			return fmt.Sprintf("%d%s", int64(b)/u.factor, u.suffix)
		}
	}
	return fmt.Sprintf("%dB", int64(b))
}
