package infer

import "fmt"

// yolov8Decoder decodes an ultralytics detect head (YOLOv8 and later): one output
// [1, 4+C, N], per anchor cx, cy, w, h in input pixels, then C class scores (already
// sigmoided, no objectness). Exports with the transposed layout [1, N, 4+C] are read
// too.
type yolov8Decoder struct {
	filter
	n          int  // anchors
	transposed bool // [1, N, 4+C]
	// Scratch for the channel-major layout, per anchor: the best class score and its
	// class, found a class row at a time, which reads the tensor in order.
	best []float32
	cls  []int32
}

func newYOLOv8(m *Manifest, outputs []TensorInfo) (*yolov8Decoder, error) {
	if len(outputs) != 1 {
		return nil, fmt.Errorf("output.decoder: yolov8 needs exactly 1 output, the model has %d", len(outputs))
	}
	d := &yolov8Decoder{filter: newFilter(m)}
	rows := int64(4 + len(m.Labels))
	got := outputs[0].Shape
	switch {
	case len(got) != 3 || !batchOne(got) || got[1] <= 0 || got[2] <= 0:
	case got[1] == rows: // the ultralytics default; wins if N happens to be 4+C too
		d.n = int(got[2])
		d.best = make([]float32, d.n)
		d.cls = make([]int32, d.n)
	case got[2] == rows:
		d.n, d.transposed = int(got[1]), true
	}
	if d.n == 0 {
		return nil, fmt.Errorf("output %s: the yolov8 decoder with %d labels needs shape [1 %d N] or [1 N %d] (4 box values and a score per label)",
			outputs[0], len(m.Labels), rows, rows)
	}
	return d, nil
}

func (d *yolov8Decoder) Decode(out [][]float32, g Geometry, dst []Detection) []Detection {
	classes := len(d.labels)
	data := out[0][:(4+classes)*d.n]
	base := len(dst)
	if d.transposed {
		for i := range d.n {
			r := data[i*(4+classes) : (i+1)*(4+classes)]
			best, score := 0, r[4]
			for k, p := range r[5:] {
				if p > score {
					best, score = k+1, p
				}
			}
			if !(score > d.score) {
				continue
			}
			dst = d.add(dst, best, score, xywh(r[0], r[1], r[2], r[3]), g)
		}
		return d.finish(dst, base)
	}

	n := d.n
	copy(d.best, data[4*n:5*n])
	clear(d.cls)
	for k := 1; k < classes; k++ {
		row := data[(4+k)*n : (5+k)*n]
		best, cls := d.best[:len(row)], d.cls[:len(row)]
		for i, p := range row {
			if p > best[i] {
				best[i], cls[i] = p, int32(k)
			}
		}
	}
	cx, cy, w, h := data[:n], data[n:2*n], data[2*n:3*n], data[3*n:4*n]
	for i, score := range d.best {
		if !(score > d.score) {
			continue
		}
		dst = d.add(dst, int(d.cls[i]), score, xywh(cx[i], cy[i], w[i], h[i]), g)
	}
	return d.finish(dst, base)
}

// xywh turns a centre and size into corners.
func xywh(cx, cy, w, h float32) [4]float32 {
	return [4]float32{cx - w/2, cy - h/2, cx + w/2, cy + h/2}
}
