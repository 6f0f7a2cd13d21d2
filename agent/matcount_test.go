//go:build !matprofile

package agent

// matCount is the number of live gocv Mats; without the matprofile build tag it is not
// tracked and always 0 (make test-mats runs with the tag).
func matCount() int { return 0 }
