// Package tensorfile stores a model's raw output tensor for golden-file tests: the
// float32 values little-endian and gzip-compressed in NAME.f32.gz, with NAME.json
// beside it saying what the tensor is and where it came from. Only tests import it.
package tensorfile

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vigil-edge/vigil/infer"
)

// Meta describes a stored tensor.
type Meta struct {
	// Source says how the tensor was made (model, image, runtime), for people.
	Source string  `json:"source"`
	Shape  []int64 `json:"shape"`
	// Geometry maps the model input the tensor was computed on back to the frame.
	Geometry infer.Geometry `json:"geometry"`
}

// Write stores data as base.f32.gz and meta as base.json.
func Write(base string, data []float32, meta Meta) error {
	if n := (infer.TensorInfo{Shape: meta.Shape}).Elements(); n != len(data) {
		return fmt.Errorf("write %s: shape %v has %d elements, the data %d", base, meta.Shape, n, len(data))
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if err := binary.Write(zw, binary.LittleEndian, data); err != nil {
		return fmt.Errorf("write %s: %w", base, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("write %s: %w", base, err)
	}
	if err := os.WriteFile(base+".f32.gz", buf.Bytes(), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(base+".json", append(js, '\n'), 0o644)
}

// Read loads what Write stored, checking that the data fits the shape.
func Read(base string) ([]float32, Meta, error) {
	var meta Meta
	js, err := os.ReadFile(base + ".json")
	if err != nil {
		return nil, meta, err
	}
	dec := json.NewDecoder(strings.NewReader(string(js)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&meta); err != nil {
		return nil, meta, fmt.Errorf("read %s.json: %w", base, err)
	}
	f, err := os.Open(base + ".f32.gz")
	if err != nil {
		return nil, meta, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, meta, fmt.Errorf("read %s.f32.gz: %w", base, err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return nil, meta, fmt.Errorf("read %s.f32.gz: %w", base, err)
	}
	n := (infer.TensorInfo{Shape: meta.Shape}).Elements()
	if len(raw) != 4*n {
		return nil, meta, fmt.Errorf("read %s.f32.gz: %d bytes, shape %v needs %d", base, len(raw), meta.Shape, 4*n)
	}
	data := make([]float32, n)
	if _, err := binary.Decode(raw, binary.LittleEndian, data); err != nil {
		return nil, meta, fmt.Errorf("read %s.f32.gz: %w", base, err)
	}
	return data, meta, nil
}
