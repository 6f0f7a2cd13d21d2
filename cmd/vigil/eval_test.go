package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A tiny labelled set from the reference images, with the reference boxes of
// ../shared/models/README.md as the truth.
func labelledSet(t *testing.T, horse string) string {
	dir := t.TempDir()
	for _, name := range []string{"dog.jpg", "person.jpg"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "infer", "detector", "testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "dog.json"), []byte(`{"detections": [{"label": "dog", "box": [132.8, 206.6, 325.7, 543.1]},
		{"label": "bicycle", "box": [51.7, 137.2, 572.3, 423.6]}, {"label": "car", "box": [466.3, 78.4, 692.5, 171.3]}]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "person.json"), []byte(`{"detections": [{"label": "person", "box": [188.4, 97.0, 276.5, 371.1]},
		{"label": "dog", "box": [62.3, 262.9, 200.5, 348.3]}, {"label": "`+horse+`", "box": [404.0, 138.1, 602.4, 342.8]}]}`), 0o644)
	return dir
}

func TestModelEval(t *testing.T) {
	bundle := filepath.Join("..", "..", "assets", "models", "yolox-nano")
	for _, tc := range []struct {
		horse             string
		precision, recall float64
	}{
		{"horse", 1, 1},
		{"cat", 5.0 / 6, 5.0 / 6}, // mislabelled: the horse is a false positive, the "cat" a miss
	} {
		var out, errb bytes.Buffer
		if code := run([]string{"model", "eval", bundle, "--images", labelledSet(t, tc.horse), "--json"}, &out, &errb); code != 0 {
			t.Fatalf("eval: %d %s", code, errb.String())
		}
		var res struct {
			Precision, Recall float64
			MAP50             float64 `json:"map50"`
		}
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Fatal(err)
		}
		if math.Abs(res.Precision-tc.precision) > 1e-9 || math.Abs(res.Recall-tc.recall) > 1e-9 || res.MAP50 <= 0 {
			t.Errorf("%s: %+v", tc.horse, res)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"model", "eval", bundle, "--images", t.TempDir()}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no labelled images") {
		t.Errorf("an empty set: %d %s", code, errb.String())
	}
}
