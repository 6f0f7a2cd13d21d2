// Package drift tells when what a camera sees no longer looks like what its model saw
// when it went live: cheap statistics of the frames (brightness, contrast, sharpness,
// colour) and of the model's output (objects per frame, their mean score, the mix of
// classes) are binned into histograms, a baseline is recorded first, and the recent
// window is compared with it by the population stability index (PSI) of each statistic.
//
// PSI = sum over bins of (recent - baseline) * ln(recent / baseline), on the bins'
// shares. It is the standard measure of distribution shift in model monitoring: it needs
// no labels, works on binned data kept in a few counters, is symmetric in spirit, and
// its scale is well known (below 0.1 no shift, 0.1 to 0.25 some, above 0.25 a
// significant one). The camera's drift score is the largest PSI over the statistics,
// with the statistic that gives it.
//
// Most statistics put a sample in one bin. Two spread it: colour is the share of the
// frame's pixels in each of 12 hue sectors and a grey bin (low saturation or dark), and
// classes the share of the frame's detections of each label (the first 15 labels the
// baseline sees get a bin each, any other label the last bin, so a class never seen at
// baseline is drift; a frame without detections says nothing about the class mix).
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

// The statistics, in this order; the scalar ones have the bin edges of their
// histograms.
var features = []struct {
	name  string
	edges []float64
	bins  int
}{
	{name: "brightness", edges: []float64{32, 64, 96, 128, 160, 192, 224}},
	{name: "contrast", edges: []float64{8, 16, 24, 32, 48, 64, 96}},
	{name: "sharpness", edges: []float64{10, 30, 100, 300, 1000, 3000}},
	{name: "colour", bins: hueBins + 1},
	{name: "objects", edges: []float64{0.5, 1.5, 2.5, 4.5, 8.5}},
	{name: "score", edges: []float64{0.01, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}},
	{name: "classes", bins: classBins},
}

const (
	fColour, fClasses = 3, 6

	hueBins = 12
	// A pixel below these (of 255) has no hue to speak of: it counts as grey.
	minSaturation, minValue = 40, 40
	classBins               = 16
)

func binsOf(f int) int {
	if features[f].edges != nil {
		return len(features[f].edges) + 1
	}
	return features[f].bins
}

// Status is a camera's drift for the status page and telemetry.
type Status struct {
	Score    float64 `json:"score"`
	Feature  string  `json:"feature,omitempty"` // the statistic that drifted most
	Drifting bool    `json:"drifting"`
	Baseline bool    `json:"baseline_ready"`
	// Features is the PSI of each statistic (once the window is full).
	Features map[string]float64 `json:"features,omitempty"`
}

// Monitor watches one camera. It is safe for concurrent use.
type Monitor struct {
	opts Options

	mu    sync.Mutex // guards the fields below
	n     int        // frames observed
	base  [][]float64
	baseN int
	// recent is a ring of Window samples: per sample, per feature, the sample's weight
	// in each bin (one bin 1 for a scalar; shares for colour and classes; all 0 for
	// classes without detections).
	recent  [][][]float64
	pos     int
	filled  int
	labels  map[string]int // class bins, assigned while the baseline records
	scratch [][]float64    // a baseline sample
	status  Status
	psi     []float64 // of each statistic, at the last sample
	gray    []float64 // the frame on a gridW x gridH grid
	hue     [hueBins + 1]int
	small   gocv.Mat // for a frame whose pixels cannot be read in place
}

// New returns a monitor that starts recording its baseline.
func New(opts Options) *Monitor {
	m := &Monitor{opts: opts, gray: make([]float64, gridW*gridH), small: gocv.NewMat()}
	m.resetLocked()
	return m
}

// Close frees the scratch images.
func (m *Monitor) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.small.Close()
}

// Reset starts a new baseline (a new model went live, the camera was moved on purpose).
func (m *Monitor) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resetLocked()
}

func (m *Monitor) resetLocked() {
	m.base = newSample()
	m.baseN, m.pos, m.filled = 0, 0, 0
	m.recent = make([][][]float64, m.opts.Window)
	for i := range m.recent {
		m.recent[i] = newSample()
	}
	m.labels = map[string]int{}
	m.scratch = newSample()
	m.psi = make([]float64, len(features))
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
	if m.baseN < m.opts.Baseline {
		m.measure(frame, dets, m.scratch, true)
		for f := range m.scratch {
			for b, w := range m.scratch[f] {
				m.base[f][b] += w
			}
		}
		m.baseN++
		m.status.Baseline = m.baseN == m.opts.Baseline
		return 0
	}
	m.measure(frame, dets, m.recent[m.pos], false)
	m.pos = (m.pos + 1) % len(m.recent)
	m.filled = min(m.filled+1, len(m.recent))
	if m.filled < len(m.recent) {
		return 0
	}
	score, feature := m.psiLocked()
	m.status.Score, m.status.Feature = round3(score), feature
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
	st := m.status
	if m.filled == len(m.recent) && m.baseN == m.opts.Baseline {
		st.Features = make(map[string]float64, len(features))
		for f, v := range m.psi {
			st.Features[features[f].name] = round3(v)
		}
	}
	return st
}

func newSample() [][]float64 {
	s := make([][]float64, len(features))
	for f := range features {
		s[f] = make([]float64, binsOf(f))
	}
	return s
}

// measure computes the statistics of one sample into out (overwritten). learn assigns
// bins to labels not seen yet (while the baseline records).
func (m *Monitor) measure(frame gocv.Mat, dets []infer.Detection, out [][]float64, learn bool) {
	for f := range out {
		clear(out[f])
	}
	brightness, contrast, sharpness := m.grid(frame)
	n := float64(gridW * gridH)
	for b, c := range m.hue {
		out[fColour][b] = float64(c) / n
	}

	var score float64
	for _, d := range dets {
		score += float64(d.Score)
		b, ok := m.labels[d.Label]
		if !ok {
			b = classBins - 1 // other
			if learn && len(m.labels) < classBins-1 {
				b = len(m.labels)
				m.labels[d.Label] = b
			}
		}
		out[fClasses][b] += 1 / float64(len(dets))
	}
	if len(dets) > 0 {
		score /= float64(len(dets))
	}
	for _, sc := range [...]struct {
		f int
		v float64
	}{{0, brightness}, {1, contrast}, {2, sharpness}, {4, float64(len(dets))}, {5, score}} {
		f, v := sc.f, sc.v
		b := 0
		for b < len(features[f].edges) && v >= features[f].edges[b] {
			b++
		}
		out[f][b] = 1
	}
}

// The frame is looked at on a grid of gridW x gridH points (for 16:9, about 8x8-pixel
// cells at 768x432), each the mean of a 2x2 block of pixels.
const gridW, gridH = 96, 54

// grid samples the frame (BGR) on the grid into m.gray and m.hue and returns the grey
// level's mean and standard deviation and the variance of its Laplacian. It reads the
// pixels in place, in Go: OpenCV's resize and colour conversions hand even small jobs
// to its worker threads, which then spin beside the inference runtime's and cost a
// two-core device some 10 % of its frame rate (measured with vigil bench --monitoring).
func (m *Monitor) grid(frame gocv.Mat) (brightness, contrast, sharpness float64) {
	clear(m.hue[:])
	src := frame
	if !frame.IsContinuous() || frame.Type() != gocv.MatTypeCV8UC3 || frame.Cols() < 2*gridW || frame.Rows() < 2*gridH {
		// Not expected from a camera; convert once rather than refuse it.
		gocv.Resize(frame, &m.small, image.Pt(2*gridW, 2*gridH), 0, 0, gocv.InterpolationLinear)
		switch m.small.Channels() {
		case 1:
			gocv.CvtColor(m.small, &m.small, gocv.ColorGrayToBGR)
		case 4:
			gocv.CvtColor(m.small, &m.small, gocv.ColorBGRAToBGR)
		}
		src = m.small
	}
	px, err := src.DataPtrUint8()
	if err != nil || src.Type() != gocv.MatTypeCV8UC3 {
		return 0, 0, 0
	}
	w, h := src.Cols(), src.Rows()
	stride := 3 * w
	var sum, sumSq float64
	for j := range gridH {
		y := (2*j + 1) * h / (2 * gridH)
		y = min(y, h-2)
		for i := range gridW {
			x := (2*i + 1) * w / (2 * gridW)
			x = min(x, w-2)
			o := y*stride + 3*x
			b := int(px[o]) + int(px[o+3]) + int(px[o+stride]) + int(px[o+stride+3])
			g := int(px[o+1]) + int(px[o+4]) + int(px[o+stride+1]) + int(px[o+stride+4])
			r := int(px[o+2]) + int(px[o+5]) + int(px[o+stride+2]) + int(px[o+stride+5])
			// Sums of four: the grey level and the hue come out of them directly.
			grey := (0.114*float64(b) + 0.587*float64(g) + 0.299*float64(r)) / 4
			m.gray[j*gridW+i] = grey
			sum += grey
			sumSq += grey * grey
			m.hue[hueBin(b, g, r)]++
		}
	}
	n := float64(gridW * gridH)
	brightness = sum / n
	contrast = math.Sqrt(max(0, sumSq/n-brightness*brightness))
	// The Laplacian (4-neighbour) on the grid's interior.
	var lsum, lsq float64
	for j := 1; j < gridH-1; j++ {
		for i := 1; i < gridW-1; i++ {
			k := j*gridW + i
			l := m.gray[k-1] + m.gray[k+1] + m.gray[k-gridW] + m.gray[k+gridW] - 4*m.gray[k]
			lsum += l
			lsq += l * l
		}
	}
	ln := float64((gridW - 2) * (gridH - 2))
	lmean := lsum / ln
	sharpness = max(0, lsq/ln-lmean*lmean)
	return brightness, contrast, sharpness
}

// hueBin is the hue sector of a colour (channel sums of four pixels), or the grey bin
// when it is too pale or dark to have one (saturation or value under 40 of 255).
func hueBin(b, g, r int) int {
	hi, lo := max(b, g, r), min(b, g, r)
	if hi < 4*minValue || (hi-lo)*255 < minSaturation*hi {
		return hueBins
	}
	var h float64 // degrees
	d := float64(hi - lo)
	switch hi {
	case r:
		h = 60 * float64(g-b) / d
	case g:
		h = 120 + 60*float64(b-r)/d
	default:
		h = 240 + 60*float64(r-g)/d
	}
	if h < 0 {
		h += 360
	}
	return min(int(h)*hueBins/360, hueBins-1)
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// psiLocked is the largest PSI over the statistics, and which. A statistic with no
// weight on either side (classes, when no frame had a detection) is left out.
func (m *Monitor) psiLocked() (float64, string) {
	const eps = 1e-4 // an empty bin on either side would make the PSI infinite
	worst, which := 0.0, ""
	for f := range features {
		counts := make([]float64, binsOf(f))
		var total, baseTotal float64
		for _, s := range m.recent {
			for b, w := range s[f] {
				counts[b] += w
				total += w
			}
		}
		for _, w := range m.base[f] {
			baseTotal += w
		}
		if total == 0 || baseTotal == 0 {
			m.psi[f] = 0
			continue
		}
		psi := 0.0
		for b := range counts {
			e := max(m.base[f][b]/baseTotal, eps)
			a := max(counts[b]/total, eps)
			psi += (a - e) * math.Log(a/e)
		}
		m.psi[f] = psi
		if psi > worst {
			worst, which = psi, features[f].name
		}
	}
	return worst, which
}
