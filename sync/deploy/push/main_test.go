package push_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a paho goroutine of a push outlives its test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
