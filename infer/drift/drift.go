// Package drift tells when what a camera sees no longer looks like what its model saw
// when it went live: cheap statistics of the frames (brightness, contrast, sharpness)
// and of the model's output (objects per frame, their mean score) are binned into
// histograms, a baseline is recorded first, and the recent window is compared with it
// by the population stability index (PSI) of each statistic.
//
// PSI = sum over bins of (recent - baseline) * ln(recent / baseline), on the bins'
// shares. It is the standard measure of distribution shift in model monitoring: it needs
// no labels, works on binned data kept in a few counters, is symmetric in spirit, and
// its scale is well known (below 0.1 no shift, 0.1 to 0.25 some, above 0.25 a
// significant one). The camera's drift score is the largest PSI over the statistics,
// with the statistic that gives it.
package drift

import (
	"image"
	"math"
	"sync"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/infer"
)

// Options configure a Monitor.
type Options struct {
	// Every samples one frame in Every (the statistics cost ~0.1 ms a sample).
	Every int
	// Baseline is how many samples make the baseline; Window how many recent samples
	// are compared with it.
	Baseline, Window int
	// Threshold is the score above which the camera drifts; it stops drifting below
	// Clear (hysteresis: a score hovering at the threshold is one event, not a flood).
	Threshold, Clear float64
}

// Statistics, and the bin edges of their histograms.
var features = []struct {
	name  string
	edges []float64
}{
	{"brightness", []float64{32, 64, 96, 128, 160, 192, 224}},
	{"contrast", []float64{8, 16, 24, 32, 48, 64, 96}},
	{"sharpness", []float64{10, 30, 100, 300, 1000, 3000}},
	{"objects", []float64{0.5, 1.5, 2.5, 4.5, 8.5}},
	{"score", []float64{0.01, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}},
}

// Status is a camera's drift for the status page and telemetry.
type Status struct {
	Score    float64 `json:"score"`
	Feature  string  `json:"feature,omitempty"` // the statistic that drifted most
	Drifting bool    `json:"drifting"`
	Baseline bool    `json:"baseline_ready"`
}

// Monitor watches one camera. It is safe for concurrent use.
type Monitor struct {
	opts Options

	mu       sync.Mutex // guards the fields below
	n        int        // frames observed
	base     [][]float64
	baseN    int
	recent   [][]int // ring of bin indices per sample, per feature
	pos      int
	filled   int
	status   Status
	small    gocv.Mat
	gray     gocv.Mat
	lap      gocv.Mat
	mean, sd gocv.Mat
}

// New returns a monitor that starts recording its baseline.
func New(opts Options) *Monitor {
	m := &Monitor{opts: opts, small: gocv.NewMat(), gray: gocv.NewMat(), lap: gocv.NewMat(), mean: gocv.NewMat(), sd: gocv.NewMat()}
	m.resetLocked()
	return m
}

// Close frees the scratch images.
func (m *Monitor) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mat := range []*gocv.Mat{&m.small, &m.gray, &m.lap, &m.mean, &m.sd} {
		mat.Close()
	}
}

// Reset starts a new baseline (a new model went live, the camera was moved on purpose).
func (m *Monitor) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resetLocked()
}

func (m *Monitor) resetLocked() {
	m.base = make([][]float64, len(features))
	for i, f := range features {
		m.base[i] = make([]float64, len(f.edges)+1)
	}
	m.baseN, m.pos, m.filled = 0, 0, 0
	m.recent = make([][]int, m.opts.Window)
	m.status = Status{}
}

// Observe takes a frame (BGR) and its detections. It returns +1 when the camera starts
// drifting, -1 when it stops, 0 otherwise.
func (m *Monitor) Observe(frame gocv.Mat, dets []infer.Detection) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n++
	if m.opts.Every > 1 && m.n%m.opts.Every != 0 {
		return 0
	}
	bins := m.bins(frame, dets)
	if m.baseN < m.opts.Baseline {
		for i, b := range bins {
			m.base[i][b]++
		}
		m.baseN++
		m.status.Baseline = m.baseN == m.opts.Baseline
		return 0
	}
	m.recent[m.pos] = bins
	m.pos = (m.pos + 1) % len(m.recent)
	m.filled = min(m.filled+1, len(m.recent))
	if m.filled < len(m.recent) {
		return 0
	}
	score, feature := m.psiLocked()
	m.status.Score, m.status.Feature = score, feature
	switch {
	case !m.status.Drifting && score > m.opts.Threshold:
		m.status.Drifting = true
		return 1
	case m.status.Drifting && score < m.opts.Clear:
		m.status.Drifting = false
		return -1
	}
	return 0
}

// Status reports the camera's drift.
func (m *Monitor) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

// bins computes the statistics of one sample and the bin each falls in.
func (m *Monitor) bins(frame gocv.Mat, dets []infer.Detection) []int {
	gocv.Resize(frame, &m.small, image.Pt(96, 54), 0, 0, gocv.InterpolationArea)
	gocv.CvtColor(m.small, &m.gray, gocv.ColorBGRToGray)
	gocv.MeanStdDev(m.gray, &m.mean, &m.sd)
	brightness, contrast := m.mean.GetDoubleAt(0, 0), m.sd.GetDoubleAt(0, 0)
	gocv.Laplacian(m.gray, &m.lap, gocv.MatTypeCV64F, 1, 1, 0, gocv.BorderDefault)
	gocv.MeanStdDev(m.lap, &m.mean, &m.sd)
	sharpness := m.sd.GetDoubleAt(0, 0) * m.sd.GetDoubleAt(0, 0)
	var score float64
	for _, d := range dets {
		score += float64(d.Score)
	}
	if len(dets) > 0 {
		score /= float64(len(dets))
	}
	values := []float64{brightness, contrast, sharpness, float64(len(dets)), score}
	out := make([]int, len(values))
	for i, v := range values {
		b := 0
		for b < len(features[i].edges) && v >= features[i].edges[b] {
			b++
		}
		out[i] = b
	}
	return out
}

// psiLocked is the largest PSI over the statistics, and which.
func (m *Monitor) psiLocked() (float64, string) {
	const eps = 1e-4 // an empty bin on either side would make the PSI infinite
	worst, which := 0.0, ""
	for i, f := range features {
		counts := make([]float64, len(f.edges)+1)
		for _, s := range m.recent {
			counts[s[i]]++
		}
		psi := 0.0
		for b := range counts {
			e := max(m.base[i][b]/float64(m.baseN), eps)
			a := max(counts[b]/float64(len(m.recent)), eps)
			psi += (a - e) * math.Log(a/e)
		}
		if psi > worst {
			worst, which = psi, f.name
		}
	}
	return worst, which
}
