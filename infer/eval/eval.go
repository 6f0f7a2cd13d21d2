// Package eval measures a detector against labelled images: precision and recall at the
// model's score threshold, mean IoU of the matched boxes, and mAP at IoU 0.5 (the
// PASCAL VOC measure, all-point interpolated). It is pure Go: the caller runs the model.
package eval

import (
	"slices"

	"github.com/vigil-edge/vigil/infer"
)

// Truth is one labelled object.
type Truth struct {
	Label string     `json:"label"`
	Box   [4]float32 `json:"box"`
}

// Image is one labelled image and what the model found in it.
type Image struct {
	Name       string
	Truth      []Truth
	Detections []infer.Detection
}

// Result are the measures over a set of images.
type Result struct {
	Images    int     `json:"images"`
	Objects   int     `json:"objects"`
	TP        int     `json:"true_positives"`
	FP        int     `json:"false_positives"`
	FN        int     `json:"false_negatives"`
	Precision float64 `json:"precision"`
	Recall    float64 `json:"recall"`
	MeanIoU   float64 `json:"mean_iou"`
	// MAP50 is the mean over the labelled classes of the average precision at IoU 0.5,
	// over every detection (any score).
	MAP50 float64            `json:"map50"`
	AP50  map[string]float64 `json:"ap50"`
}

// MatchIoU is the overlap a detection needs to count as finding a labelled object.
const MatchIoU = 0.5

// Evaluate scores images; detections below threshold count for mAP only.
func Evaluate(images []Image, threshold float32) Result {
	res := Result{Images: len(images), AP50: map[string]float64{}}
	var iouSum float64
	type scored struct {
		score float32
		tp    bool
	}
	perClass := map[string][]scored{}
	objects := map[string]int{}
	for _, img := range images {
		res.Objects += len(img.Truth)
		for _, t := range img.Truth {
			objects[t.Label]++
		}
		dets := slices.Clone(img.Detections)
		slices.SortStableFunc(dets, func(a, b infer.Detection) int {
			switch {
			case a.Score > b.Score:
				return -1
			case a.Score < b.Score:
				return 1
			}
			return 0
		})
		// Greedy matching, best score first, for the threshold measures and for AP.
		usedAll := make([]bool, len(img.Truth))
		usedThr := make([]bool, len(img.Truth))
		for _, d := range dets {
			if i, _ := best(d, img.Truth, usedAll); i >= 0 {
				usedAll[i] = true
				perClass[d.Label] = append(perClass[d.Label], scored{d.Score, true})
			} else {
				perClass[d.Label] = append(perClass[d.Label], scored{d.Score, false})
			}
			if d.Score < threshold {
				continue
			}
			if i, iou := best(d, img.Truth, usedThr); i >= 0 {
				usedThr[i] = true
				res.TP++
				iouSum += float64(iou)
			} else {
				res.FP++
			}
		}
		for _, u := range usedThr {
			if !u {
				res.FN++
			}
		}
	}
	if res.TP+res.FP > 0 {
		res.Precision = float64(res.TP) / float64(res.TP+res.FP)
	}
	if res.Objects > 0 {
		res.Recall = float64(res.TP) / float64(res.Objects)
	}
	if res.TP > 0 {
		res.MeanIoU = iouSum / float64(res.TP)
	}
	for label, n := range objects {
		s := perClass[label]
		slices.SortStableFunc(s, func(a, b scored) int {
			switch {
			case a.score > b.score:
				return -1
			case a.score < b.score:
				return 1
			}
			return 0
		})
		var prec, rec []float64
		tp, fp := 0, 0
		for _, x := range s {
			if x.tp {
				tp++
			} else {
				fp++
			}
			prec = append(prec, float64(tp)/float64(tp+fp))
			rec = append(rec, float64(tp)/float64(n))
		}
		res.AP50[label] = averagePrecision(prec, rec)
		res.MAP50 += res.AP50[label] / float64(len(objects))
	}
	return res
}

// best is the unused labelled object of d's label that d overlaps most, if by MatchIoU.
func best(d infer.Detection, truth []Truth, used []bool) (int, float32) {
	bi, biou := -1, float32(MatchIoU)
	for i, t := range truth {
		if used[i] || t.Label != d.Label {
			continue
		}
		if iou := infer.IoU(d.Box, t.Box); iou >= biou {
			bi, biou = i, iou
		}
	}
	return bi, biou
}

// averagePrecision is the area under the precision-recall curve with precision made
// monotonic (all-point interpolation, as PASCAL VOC since 2010).
func averagePrecision(prec, rec []float64) float64 {
	if len(prec) == 0 {
		return 0
	}
	p := append([]float64{0}, append(slices.Clone(prec), 0)...)
	r := append([]float64{0}, append(slices.Clone(rec), rec[len(rec)-1])...)
	for i := len(p) - 2; i >= 0; i-- {
		p[i] = max(p[i], p[i+1])
	}
	ap := 0.0
	for i := 1; i < len(r); i++ {
		ap += (r[i] - r[i-1]) * p[i]
	}
	return ap
}
