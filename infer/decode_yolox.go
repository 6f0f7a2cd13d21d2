package infer

import (
	"fmt"
	"math"
)

// yoloxDecoder decodes YOLOX's single output [1, rows, 5+classes]: per row tx, ty, tw, th,
// objectness, then class probabilities (objectness and classes already sigmoided),
// rows ordered by stride level, then row-major grid cells.
type yoloxDecoder struct {
	filter
	strides []int
	gridW   []int
	gridH   []int
	rows    int
	cols    int
}

func newYOLOX(m *Manifest, outputs []TensorInfo) (*yoloxDecoder, error) {
	d := &yoloxDecoder{filter: newFilter(m), strides: m.Output.Strides, cols: 5 + len(m.Labels)}
	for _, s := range d.strides {
		gw, gh := m.Input.Width/s, m.Input.Height/s
		d.gridW = append(d.gridW, gw)
		d.gridH = append(d.gridH, gh)
		d.rows += gw * gh
	}
	if len(outputs) != 1 {
		return nil, fmt.Errorf("output.decoder: yolox needs exactly 1 output, the model has %d", len(outputs))
	}
	want := []int64{1, int64(d.rows), int64(d.cols)}
	got := outputs[0].Shape
	if len(got) != 3 || !batchOne(got) || got[1] != want[1] || got[2] != want[2] {
		return nil, fmt.Errorf("output %s: the yolox decoder with output.strides %v, input %dx%d and %d labels needs shape %v",
			outputs[0], d.strides, m.Input.Width, m.Input.Height, len(m.Labels), want)
	}
	return d, nil
}

func (d *yoloxDecoder) Decode(out [][]float32, g Geometry, dst []Detection) []Detection {
	data := out[0][:d.rows*d.cols]
	base := len(dst)
	row := 0
	for level, stride := range d.strides {
		s := float32(stride)
		for gy := 0; gy < d.gridH[level]; gy++ {
			for gx := 0; gx < d.gridW[level]; gx++ {
				r := data[row*d.cols : (row+1)*d.cols]
				row++
				obj := r[4]
				// score = obj * cls <= obj: most rows are rejected here without a class
				// scan. Written as !(>) so a NaN is rejected too.
				if !(obj > d.score) {
					continue
				}
				best, bestP := 0, r[5]
				for k, p := range r[6:] {
					if p > bestP {
						best, bestP = k+1, p
					}
				}
				score := obj * bestP
				if !(score > d.score) {
					continue
				}
				cx, cy := (r[0]+float32(gx))*s, (r[1]+float32(gy))*s
				w, h := float32(math.Exp(float64(r[2])))*s, float32(math.Exp(float64(r[3])))*s
				dst = d.add(dst, best, score, [4]float32{cx - w/2, cy - h/2, cx + w/2, cy + h/2}, g)
			}
		}
	}
	return d.finish(dst, base)
}
