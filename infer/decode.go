package infer

import (
	"fmt"
	"math"
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

// Decoder turns a model's output tensors into detections in frame coordinates,
// filtered by the score threshold and NMS.
type Decoder interface {
	Decode(out [][]float32, g Geometry) []Detection
}

// NewDecoder builds the manifest's decoder and checks that the model's outputs have the
// shape it needs, so a mismatched bundle is rejected at load, not mid-stream.
func NewDecoder(m *Manifest, outputs []TensorInfo) (Decoder, error) {
	switch m.Output.Decoder {
	case "yolox":
		return newYOLOX(m, outputs)
	default:
		return nil, fmt.Errorf("output.decoder: unknown decoder %q", m.Output.Decoder)
	}
}

// yoloxDecoder decodes YOLOX's single output [1, rows, 5+classes]: per row tx, ty, tw, th,
// objectness, then class probabilities (objectness and classes already sigmoided),
// rows ordered by stride level, then row-major grid cells.
type yoloxDecoder struct {
	labels   []string
	strides  []int
	gridW    []int
	gridH    []int
	rows     int
	cols     int
	score    float32
	iou      float32
	agnostic bool
}

func newYOLOX(m *Manifest, outputs []TensorInfo) (*yoloxDecoder, error) {
	d := &yoloxDecoder{
		labels: m.Labels, strides: m.Output.Strides, cols: 5 + len(m.Labels),
		score: m.Thresholds.Score, iou: m.Thresholds.NMSIoU, agnostic: m.Output.NMS == "agnostic",
	}
	for _, s := range d.strides {
		gw, gh := m.Input.Width/s, m.Input.Height/s
		d.gridW = append(d.gridW, gw)
		d.gridH = append(d.gridH, gh)
		d.rows += gw * gh
	}
	if len(outputs) != 1 {
		return nil, fmt.Errorf("yolox decoder needs exactly 1 output, the model has %d", len(outputs))
	}
	want := []int64{1, int64(d.rows), int64(d.cols)}
	got := outputs[0].Shape
	if len(got) != 3 || (got[0] != 1 && got[0] != -1) || got[1] != want[1] || got[2] != want[2] {
		return nil, fmt.Errorf("output %s: the yolox decoder with strides %v, input %dx%d and %d labels needs shape %v",
			outputs[0], d.strides, m.Input.Width, m.Input.Height, len(m.Labels), want)
	}
	return d, nil
}

func (d *yoloxDecoder) Decode(out [][]float32, g Geometry) []Detection {
	data := out[0]
	var cands []Detection
	row := 0
	for level, stride := range d.strides {
		s := float32(stride)
		for gy := 0; gy < d.gridH[level]; gy++ {
			for gx := 0; gx < d.gridW[level]; gx++ {
				r := data[row*d.cols : (row+1)*d.cols]
				row++
				obj := r[4]
				// score = obj * cls <= obj: most rows are rejected here without a class scan.
				if obj <= d.score {
					continue
				}
				best, bestP := 0, r[5]
				for k, p := range r[6:] {
					if p > bestP {
						best, bestP = k+1, p
					}
				}
				score := obj * bestP
				if score <= d.score {
					continue
				}
				cx, cy := (r[0]+float32(gx))*s, (r[1]+float32(gy))*s
				w, h := float32(math.Exp(float64(r[2])))*s, float32(math.Exp(float64(r[3])))*s
				cands = append(cands, Detection{
					Label: d.labels[best], Class: best, Score: score,
					Box: g.ToFrame([4]float32{cx - w/2, cy - h/2, cx + w/2, cy + h/2}),
				})
			}
		}
	}
	return NMS(cands, d.iou, d.agnostic)
}

// NMS keeps the best-scoring detections, dropping any whose box overlaps a kept one of
// the same class (any class when agnostic) by more than iou. The result is sorted by
// score, best first. dets is reordered in place.
func NMS(dets []Detection, iou float32, agnostic bool) []Detection {
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
