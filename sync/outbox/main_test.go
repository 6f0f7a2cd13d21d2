package outbox

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a committer goroutine outlives its test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
