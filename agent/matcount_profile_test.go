//go:build matprofile

package agent

import "gocv.io/x/gocv"

// matCount is the number of live gocv Mats (gocv's matprofile build tag).
func matCount() int { return gocv.MatProfile.Count() }
