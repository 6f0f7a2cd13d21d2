package infer

import (
	"fmt"
	"strings"
)

// ssdDecoder reads the four outputs of TFLite's TFLite_Detection_PostProcess op (SSD
// and EfficientDet exports): boxes [1, N, 4] as ymin, xmin, ymax, xmax normalised to
// the model input, class ids [1, N] and scores [1, N] as floats, and the number of
// valid entries [1]. The model has already decoded anchors and run NMS; this decoder
// still applies the bundle's threshold, NMS and detection cap, so every decoder
// answers to the same manifest settings.
type ssdDecoder struct {
	filter
	boxes, classes, scores, count int // output indexes
	n                             int
	inW, inH                      float32
	offset                        int
}

func newSSD(m *Manifest, outputs []TensorInfo) (*ssdDecoder, error) {
	d := &ssdDecoder{
		filter: newFilter(m), boxes: -1, count: -1, offset: m.Output.ClassOffset,
		inW: float32(m.Input.Width), inH: float32(m.Input.Height),
	}
	// The outputs are told apart by shape: their order differs between exporters.
	var pair []int // the two [1, N] outputs
	for i, o := range outputs {
		s := o.Shape
		switch {
		case len(s) == 3 && batchOne(s) && s[1] > 0 && s[2] == 4 && d.boxes < 0:
			d.boxes, d.n = i, int(s[1])
		case len(s) <= 1 && o.Elements() == 1 && d.count < 0:
			d.count = i
		case len(s) == 2 && batchOne(s) && s[1] > 0:
			pair = append(pair, i)
		default:
			return nil, fmt.Errorf("output %s: the ssd decoder needs boxes [1 N 4], class ids [1 N], scores [1 N] and a count [1], and does not know this one", o)
		}
	}
	if len(outputs) != 4 || d.boxes < 0 || d.count < 0 || len(pair) != 2 {
		return nil, fmt.Errorf("output.decoder: ssd needs 4 outputs, boxes [1 N 4], class ids [1 N], scores [1 N] and a count [1]; the model has %s",
			describeOutputs(outputs))
	}
	for _, i := range pair {
		if int(outputs[i].Shape[1]) != d.n {
			return nil, fmt.Errorf("output %s: the ssd decoder needs [1 %d] to go with boxes %s", outputs[i], d.n, outputs[d.boxes])
		}
	}
	scores, err := ssdScores(m.Output.ScoresOutput, outputs, pair)
	if err != nil {
		return nil, err
	}
	d.scores, d.classes = pair[scores], pair[1-scores]
	return d, nil
}

// ssdScores picks which of the two [1, N] outputs holds the scores: the one the
// manifest names, else the one whose name says so, else the one TFLite's op calls
// output 2 (it names its outputs NAME, NAME:1, NAME:2, NAME:3 for boxes, classes,
// scores, count). Anything else must be named in the manifest: guessing wrong would
// read class ids as scores.
func ssdScores(named string, outputs []TensorInfo, pair []int) (int, error) {
	a, b := outputs[pair[0]].Name, outputs[pair[1]].Name
	if named != "" {
		switch named {
		case a:
			return 0, nil
		case b:
			return 1, nil
		}
		return 0, fmt.Errorf("output.scores_output: %q is neither of the model's [1 N] outputs %q and %q", named, a, b)
	}
	for _, rule := range []func(string) bool{
		func(n string) bool { return strings.Contains(strings.ToLower(n), "score") },
		func(n string) bool { return strings.HasSuffix(n, ":2") },
	} {
		switch ra, rb := rule(a), rule(b); {
		case ra && !rb:
			return 0, nil
		case rb && !ra:
			return 1, nil
		}
	}
	return 0, fmt.Errorf("output.scores_output: outputs %q and %q are both [1 N] and their names do not say which holds the scores; name it in model.yaml", a, b)
}

func describeOutputs(outputs []TensorInfo) string {
	s := make([]string, len(outputs))
	for i, o := range outputs {
		s[i] = o.String()
	}
	return fmt.Sprintf("%d: %s", len(outputs), strings.Join(s, ", "))
}

func (d *ssdDecoder) Decode(out [][]float32, g Geometry, dst []Detection) []Detection {
	boxes, classes, scores := out[d.boxes][:4*d.n], out[d.classes][:d.n], out[d.scores][:d.n]
	k := 0
	// The count is a float; a NaN or negative one means nothing valid.
	if c := out[d.count][0]; c >= float32(d.n) {
		k = d.n
	} else if c > 0 {
		k = int(c)
	}
	labels := float32(len(d.labels))
	base := len(dst)
	for i := range k {
		score := scores[i]
		if !(score > d.score) {
			continue
		}
		// Class ids are whole numbers carried as floats; round, and skip an id that
		// is no label (a model that does not fit its labels, or a NaN).
		c := classes[i] + float32(d.offset)
		if !(c > -0.5 && c < labels-0.5) {
			continue
		}
		class := int(c + 0.5)
		b := boxes[4*i : 4*i+4]
		dst = d.add(dst, class, score, [4]float32{b[1] * d.inW, b[0] * d.inH, b[3] * d.inW, b[2] * d.inH}, g)
	}
	return d.finish(dst, base)
}
