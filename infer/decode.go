package infer

import (
	"fmt"
	"slices"
)

// Geometry maps model-input pixels back to frame pixels: input = frame*Scale + Offset.
type Geometry struct {
	FrameW, FrameH   int
	ScaleX, ScaleY   float32
	OffsetX, OffsetY float32
}

// ToFrame maps a box in input pixels to frame pixels, clipped to the frame.
func (g Geometry) ToFrame(b [4]float32) [4]float32 {
	clip := func(v float32, hi int) float32 { return min(max(v, 0), float32(hi)) }
	return [4]float32{
		clip((b[0]-g.OffsetX)/g.ScaleX, g.FrameW),
		clip((b[1]-g.OffsetY)/g.ScaleY, g.FrameH),
		clip((b[2]-g.OffsetX)/g.ScaleX, g.FrameW),
		clip((b[3]-g.OffsetY)/g.ScaleY, g.FrameH),
	}
}

// Decoder turns a model's output tensors into detections in frame coordinates, filtered
// by the score threshold, NMS and the maximum number of detections.
//
// A decoder keeps scratch buffers, so it is not safe for concurrent use (a Detector
// serialises its calls).
type Decoder interface {
	// Decode appends one frame's detections, best score first, to dst and returns the
	// extended slice. It uses dst's spare capacity for the candidates before NMS, so a
	// caller that passes the previous result back as dst[:0] gets no allocation once
	// that slice has grown to the largest number of candidates seen.
	Decode(out [][]float32, g Geometry, dst []Detection) []Detection
}

// NewDecoder builds the manifest's decoder and checks that the model's outputs have the
// shape it needs, so a mismatched bundle is rejected at load, not mid-stream.
func NewDecoder(m *Manifest, outputs []TensorInfo) (Decoder, error) {
	switch m.Output.Decoder {
	case "yolox":
		return newYOLOX(m, outputs)
	case "yolov8":
		return newYOLOv8(m, outputs)
	case "ssd":
		return newSSD(m, outputs)
	case "classify":
		return newClassify(m, outputs)
	default:
		return nil, fmt.Errorf("output.decoder: unknown decoder %q", m.Output.Decoder)
	}
}

// DefaultMaxDetections is output.max_detections when model.yaml does not set it.
const DefaultMaxDetections = 100

// filter is what every detection decoder does after collecting candidates: score
// threshold (applied by the decoder while collecting), NMS and the detection cap.
type filter struct {
	labels   []string
	score    float32
	iou      float32
	agnostic bool
	max      int
}

func newFilter(m *Manifest) filter {
	f := filter{
		labels: m.Labels, score: m.Thresholds.Score, iou: m.Thresholds.NMSIoU,
		agnostic: m.Output.NMS == "agnostic", max: m.Output.MaxDetections,
	}
	if f.max <= 0 { // a Manifest built in code, without ParseManifest's defaults
		f.max = DefaultMaxDetections
	}
	return f
}

// add appends a candidate whose box is in input pixels, mapped to the frame. A box
// that lies wholly outside the frame (in the letterbox padding) is no detection.
func (f *filter) add(dst []Detection, class int, score float32, box [4]float32, g Geometry) []Detection {
	b := g.ToFrame(box)
	if !(b[2] > b[0] && b[3] > b[1]) {
		return dst
	}
	return append(dst, Detection{Label: f.labels[class], Class: class, Score: score, Box: b})
}

// finish runs NMS on the candidates dst[base:] and returns dst with the survivors.
func (f *filter) finish(dst []Detection, base int) []Detection {
	kept := nms(dst[base:], f.iou, f.agnostic, f.max)
	return dst[:base+len(kept)]
}

// NMS keeps the best-scoring detections, dropping any whose box overlaps a kept one of
// the same class (any class when agnostic) by more than iou. The result is sorted by
// score, best first. dets is reordered in place and the result shares its memory.
func NMS(dets []Detection, iou float32, agnostic bool) []Detection {
	return nms(dets, iou, agnostic, len(dets))
}

// nms is NMS keeping at most maxDets detections.
func nms(dets []Detection, iou float32, agnostic bool, maxDets int) []Detection {
	// Stable, so equal scores keep the decoder's order and results are reproducible.
	slices.SortStableFunc(dets, func(a, b Detection) int {
		switch {
		case a.Score > b.Score:
			return -1
		case a.Score < b.Score:
			return 1
		}
		return 0
	})
	kept := dets[:0]
	for _, d := range dets {
		if len(kept) >= maxDets {
			break
		}
		keep := true
		for _, k := range kept {
			if (agnostic || k.Class == d.Class) && IoU(k.Box, d.Box) > iou {
				keep = false
				break
			}
		}
		if keep {
			kept = append(kept, d)
		}
	}
	return kept
}

// batchOne reports whether a shape starts with a batch of one (or a dynamic batch,
// which engines run as one).
func batchOne(shape []int64) bool { return len(shape) > 0 && (shape[0] == 1 || shape[0] == -1) }
