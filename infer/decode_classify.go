package infer

import (
	"fmt"
	"math"
)

// classifyDecoder reads an image classifier's output [1, C] (logits or probabilities)
// and reports the top_k classes above the score threshold, each as a Detection whose
// box is the whole frame. There is no NMS: each class appears once, and all boxes
// are the same.
type classifyDecoder struct {
	filter
	softmax bool
	topK    int
	probs   []float32 // scratch for the softmax
}

func newClassify(m *Manifest, outputs []TensorInfo) (*classifyDecoder, error) {
	if len(outputs) != 1 {
		return nil, fmt.Errorf("output.decoder: classify needs exactly 1 output, the model has %d", len(outputs))
	}
	c := int64(len(m.Labels))
	s := outputs[0].Shape
	if !(len(s) == 1 && s[0] == c || len(s) == 2 && batchOne(s) && s[1] == c) {
		return nil, fmt.Errorf("output %s: the classify decoder with %d labels needs shape [1 %d] (a score per label)", outputs[0], c, c)
	}
	d := &classifyDecoder{filter: newFilter(m), softmax: m.Output.Softmax != nil && *m.Output.Softmax, topK: max(m.Output.TopK, 1)}
	if d.softmax {
		d.probs = make([]float32, c)
	}
	return d, nil
}

func (d *classifyDecoder) Decode(out [][]float32, g Geometry, dst []Detection) []Detection {
	probs := out[0][:len(d.labels)]
	if d.softmax {
		probs = softmax(d.probs, probs)
	}
	k := min(d.topK, d.max)
	base := len(dst)
	box := [4]float32{0, 0, float32(g.FrameW), float32(g.FrameH)}
	// Insertion into dst[base:], kept sorted best first and at most k long: k is
	// small, and this needs no scratch. Ties keep the lower class first.
	for class, p := range probs {
		if !(p > d.score) {
			continue
		}
		n := len(dst) - base
		if n == k {
			if !(p > dst[len(dst)-1].Score) {
				continue
			}
			dst = dst[:len(dst)-1]
			n--
		}
		i := base + n
		for i > base && p > dst[i-1].Score {
			i--
		}
		dst = append(dst, Detection{})
		copy(dst[i+1:], dst[i:])
		dst[i] = Detection{Label: d.labels[class], Class: class, Score: p, Box: box}
	}
	return dst
}

// softmax writes the softmax of logits into dst (len(logits) long) and returns it.
func softmax(dst, logits []float32) []float32 {
	hi := float32(math.Inf(-1))
	for _, v := range logits {
		hi = max(hi, v)
	}
	var sum float64
	for i, v := range logits {
		e := math.Exp(float64(v - hi)) // <= 1: no overflow
		dst[i] = float32(e)
		sum += e
	}
	for i := range dst {
		dst[i] = float32(float64(dst[i]) / sum)
	}
	return dst
}
