package agent

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vigil-edge/vigil/agent/web"
)

func postImage(t *testing.T, r *running, path string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(r.base+path, "image/jpeg", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.Bytes()
}

// POST /api/infer answers with the model's detections for the reference images, and
// refuses what is not an image, what is too big, and more requests than it may run.
func TestInferAPI(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.HTTP.Token = ""
	cfg.HTTP.InferMaxBytes = 200 << 10
	r := start(t, cfg)
	for name, want := range map[string][]string{"dog.jpg": {"bicycle", "car", "dog"}, "person.jpg": {"dog", "horse", "person"}} {
		img, err := os.ReadFile(filepath.Join("..", "infer", "detector", "testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		code, body := postImage(t, r, "/api/infer", img)
		var res web.InferResult
		if code != http.StatusOK || json.Unmarshal(body, &res) != nil {
			t.Fatalf("%s: %d %s", name, code, body)
		}
		var labels []string
		for _, d := range res.Detections {
			if d.Score >= 0.5 {
				labels = append(labels, d.Label)
			}
		}
		slices.Sort(labels)
		if !slices.Equal(labels, want) || res.Model != "default" || res.Bundle != "yolox-nano" || res.Width == 0 {
			t.Errorf("%s: %+v, labels %v, want %v", name, res, labels, want)
		}
	}
	if code, _ := postImage(t, r, "/api/infer", []byte("GIF89a not an image we take")); code != http.StatusBadRequest {
		t.Errorf("a non-image: %d, want 400", code)
	}
	if code, _ := postImage(t, r, "/api/infer", append([]byte{0xFF, 0xD8, 0xFF}, make([]byte, 300<<10)...)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("an oversized body: %d, want 413", code)
	}
	if code, _ := postImage(t, r, "/api/infer?model=nope", []byte{0xFF, 0xD8, 0xFF, 0}); code != http.StatusNotFound {
		t.Errorf("an unknown model: %d, want 404", code)
	}
}

// With http.token set, /api/infer needs it.
func TestInferAPINeedsTheToken(t *testing.T) {
	r := start(t, testConfig(t, t.TempDir(), ""))
	if code, _ := postImage(t, r, "/api/infer", []byte{0xFF, 0xD8, 0xFF, 0}); code != http.StatusUnauthorized {
		t.Errorf("without the token: %d, want 401", code)
	}
}
