// Package shadow runs a candidate model beside the one a camera uses, on a sample of
// its frames, and measures how far the two agree: the evidence for promoting a pushed
// model (vigil model push --shadow, then --promote) or a models[].shadow bundle.
package shadow

import (
	"context"
	"math"
	"slices"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/eval"
	"github.com/vigil-edge/vigil/internal/window"
)

// Shadow runs a candidate model (models[].shadow) on a sample of the frames its model
// detects, on a goroutine of its own, and measures how far the two agree: the
// candidate's detections are matched to the running model's by label and IoU >= 0.5.
// The pipeline only hands it a copy of the frame when it is idle, after the frame's
// rules and actions, so the candidate never delays an actuator or the next frame.
//
// The candidate comes from models[].shadow or from a shadow deployment (deployment set),
// which replaces it until promoted or discarded.
type Shadow struct {
	det        *detector.Detector
	dir        string
	deployment string // the push that installed it; "" for models[].shadow
	every      int
	jobs       chan job

	mu     sync.Mutex         // guards the fields below
	stop   context.CancelFunc // set by start
	done   chan struct{}
	closed bool // shut down: offers are refused
	n      int  // frames offered
	frames int  // frames run
	errs   int
	perCls map[string]*agreement
	cand   *window.Ring // recent inference times, candidate
	active *window.Ring // the same frames, running model
}

// recent is how many recent frames the latencies are taken over.
const recent = 256

type job struct {
	frame  gocv.Mat
	dets   []infer.Detection
	active time.Duration
}

type agreement struct{ tp, fp, fn int }

// Status is what the status page shows of a shadow model.
type Status struct {
	Bundle  string `json:"bundle"`
	Version string `json:"version"`
	// Deployment is the shadow deployment that installed it; "" for models[].shadow.
	Deployment string `json:"deployment,omitempty"`
	Frames     int    `json:"frames"`
	Errors     int    `json:"errors"`
	// Agreement is the F1 score of the candidate's detections against the running
	// model's (1: the same objects found), overall and per class.
	Agreement      float64            `json:"agreement"`
	PerClass       map[string]float64 `json:"per_class"`
	LatencyP50     float64            `json:"inference_ms_p50"`
	ActiveP50      float64            `json:"active_inference_ms_p50"`
	LatencyRatio   float64            `json:"latency_ratio"` // candidate / running
	ShadowingModel string             `json:"of"`
}

// New makes the shadow of a model: det, loaded from the bundle in dir, runs on one
// detected frame in every (10 when 0); deployment names the push that installed it
// ("" for models[].shadow). Run runs it; Shutdown closes det.
func New(det *detector.Detector, dir string, every int, deployment string) *Shadow {
	if every <= 0 {
		every = 10
	}
	return &Shadow{det: det, dir: dir, every: every, deployment: deployment, jobs: make(chan job, 1), perCls: map[string]*agreement{},
		cand: window.NewRing(recent), active: window.NewRing(recent)}
}

// Deployment is the push that installed the candidate; "" for models[].shadow.
func (s *Shadow) Deployment() string { return s.deployment }

// Offer hands a frame (copied) and the running model's detections to the shadow if it
// is idle and the frame is one of the sample.
func (s *Shadow) Offer(frame gocv.Mat, dets []infer.Detection, active time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	if s.closed || s.n%s.every != 0 || len(s.jobs) > 0 {
		return
	}
	j := job{frame: frame.Clone(), dets: slices.Clone(dets), active: active}
	select {
	case s.jobs <- j:
	default:
		j.frame.Close()
	}
}

// Started records how to stop the goroutine that runs the shadow's Run: stop ends it,
// done is closed when it has returned.
func (s *Shadow) Started(stop context.CancelFunc, done chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stop, s.done = stop, done
}

// Shutdown stops the shadow's goroutine, if it runs, closes the candidate and frees
// the frame still waiting, if any. A pipeline may hold the shadow a moment longer: its
// offers are refused.
func (s *Shadow) Shutdown() {
	s.mu.Lock()
	s.closed = true
	stop, done := s.stop, s.done
	s.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	for {
		select {
		case j := <-s.jobs:
			j.frame.Close()
		default:
			s.det.Close()
			return
		}
	}
}

// Run runs the candidate on the offered frames until ctx ends.
func (s *Shadow) Run(ctx context.Context) error {
	defer func() {
		for {
			select {
			case j := <-s.jobs:
				j.frame.Close()
			default:
				return
			}
		}
	}()
	var dets []infer.Detection
	for {
		select {
		case <-ctx.Done():
			return nil
		case j := <-s.jobs:
			var timing detector.Timing
			var err error
			dets, timing, err = s.det.Detect(j.frame, dets[:0])
			j.frame.Close()
			s.record(j, dets, timing.Infer, err)
		}
	}
}

func (s *Shadow) record(j job, cand []infer.Detection, took time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs++
		return
	}
	s.frames++
	threshold := s.det.Manifest().Thresholds.Score
	var truth []eval.Truth
	for _, d := range j.dets {
		if d.Score >= threshold {
			truth = append(truth, eval.Truth{Label: d.Label, Box: d.Box})
		}
	}
	// Per class, so that the status can say which classes the two disagree on.
	labels := map[string]bool{}
	for _, t := range truth {
		labels[t.Label] = true
	}
	for _, d := range cand {
		if d.Score >= threshold {
			labels[d.Label] = true
		}
	}
	for l := range labels {
		var tl []eval.Truth
		for _, t := range truth {
			if t.Label == l {
				tl = append(tl, t)
			}
		}
		var cl []infer.Detection
		for _, d := range cand {
			if d.Label == l {
				cl = append(cl, d)
			}
		}
		r := eval.Evaluate([]eval.Image{{Truth: tl, Detections: cl}}, threshold)
		a := s.perCls[l]
		if a == nil {
			a = &agreement{}
			s.perCls[l] = a
		}
		a.tp, a.fp, a.fn = a.tp+r.TP, a.fp+r.FP, a.fn+r.FN
	}
	s.cand.Add(took)
	s.active.Add(j.active)
}

func f1(a agreement) float64 {
	if a.tp+a.fp+a.fn == 0 {
		return 1 // neither saw anything: they agree
	}
	return 2 * float64(a.tp) / float64(2*a.tp+a.fp+a.fn)
}

// Status is the candidate's figures; of names the model it shadows.
func (s *Shadow) Status(of string) *Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	man := s.det.Manifest()
	st := &Status{Bundle: man.Name, Version: man.Version, Deployment: s.deployment, Frames: s.frames, Errors: s.errs, PerClass: map[string]float64{}, ShadowingModel: of}
	var all agreement
	for l, a := range s.perCls {
		st.PerClass[l] = round(f1(*a), 3)
		all.tp, all.fp, all.fn = all.tp+a.tp, all.fp+a.fp, all.fn+a.fn
	}
	st.Agreement = round(f1(all), 3)
	st.LatencyP50 = ms(window.Quantile(s.cand.Values(), 0.5))
	st.ActiveP50 = ms(window.Quantile(s.active.Values(), 0.5))
	if st.ActiveP50 > 0 {
		st.LatencyRatio = round(st.LatencyP50/st.ActiveP50, 2)
	}
	return st
}

// round3 rounds to three decimals, for JSON.
func round(v float64, _ int) float64 { return math.Round(v*1000) / 1000 }

// ms is d in milliseconds to two decimals, as the status page shows times.
func ms(d time.Duration) float64 { return math.Round(float64(d.Microseconds())/10) / 100 }
