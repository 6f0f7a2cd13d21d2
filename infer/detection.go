package infer

// Detection is one object found in a frame.
type Detection struct {
	Label string  `json:"label"`
	Class int     `json:"class"`
	Score float32 `json:"score"`
	// Box is x1, y1, x2, y2 in the source frame's pixels.
	Box [4]float32 `json:"box"`
}

// Area is the box's area in pixels.
func (d Detection) Area() float32 {
	return max(d.Box[2]-d.Box[0], 0) * max(d.Box[3]-d.Box[1], 0)
}

// IoU is the intersection over union of two boxes given as x1, y1, x2, y2.
func IoU(a, b [4]float32) float32 {
	ix := min(a[2], b[2]) - max(a[0], b[0])
	iy := min(a[3], b[3]) - max(a[1], b[1])
	if ix <= 0 || iy <= 0 {
		return 0
	}
	inter := ix * iy
	union := (a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - inter
	if union <= 0 {
		return 0
	}
	return inter / union
}
