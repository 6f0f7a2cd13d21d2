// Package modelfile reads model files without a runtime: ONNX (protobuf) and TFLite
// (flatbuffer) are parsed in pure Go, enough to list a model's inputs, outputs,
// operators and versions, and to check a model bundle's model.yaml against the model
// it names. It is pure Go (no cgo), so `vigil model inspect` and bundle checks work on
// machines without any inference runtime.
//
// Every read is bounds-checked: malformed or hostile input returns an error, never a
// panic, and nothing is allocated in proportion to a length field before that length
// has been checked against the data that is actually there.
package modelfile

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/vigil-edge/vigil/infer"
)

// Formats.
const (
	ONNX   = "onnx"
	TFLite = "tflite"
)

// Model is what a model file says about itself.
type Model struct {
	Format string `json:"format"` // onnx | tflite

	// ONNX only.
	IRVersion       int64   `json:"ir_version,omitempty"`
	Opsets          []Opset `json:"opsets,omitempty"`
	Producer        string  `json:"producer,omitempty"`
	ProducerVersion string  `json:"producer_version,omitempty"`
	// ExternalTensors counts initializers whose data lives in files beside the model
	// (ONNX external data); a runtime reading the model from memory cannot load them.
	ExternalTensors int `json:"external_tensors,omitempty"`

	// TFLite only.
	SchemaVersion uint32 `json:"schema_version,omitempty"`
	Description   string `json:"description,omitempty"`
	Subgraphs     int    `json:"subgraphs,omitempty"`

	// Inputs and Outputs are the main graph's (ONNX graph, TFLite subgraph 0), in
	// order. Element types are infer's float32/float16/uint8/int8, or the format's
	// type name in lower case (int64, bool, ...); a dimension of -1 is dynamic; a nil
	// shape is unknown.
	Inputs  []infer.TensorInfo `json:"inputs"`
	Outputs []infer.TensorInfo `json:"outputs"`
	// Operators lists each distinct operator with how many nodes use it, most used
	// first.
	Operators []Operator `json:"operators"`
}

// Opset is one ONNX operator set the model imports. Domain "" is the default ai.onnx.
type Opset struct {
	Domain  string `json:"domain"`
	Version int64  `json:"version"`
}

// Operator is one distinct operator type and how often it occurs.
type Operator struct {
	// Domain is the ONNX operator domain; "" is the default ai.onnx.
	Domain string `json:"domain,omitempty"`
	// Type is the ONNX op_type, the TFLite builtin operator name (CONV_2D) or, for a
	// TFLite custom operator, its custom code.
	Type string `json:"type"`
	// Version is the TFLite operator version (ONNX versions come from the opsets).
	Version int32 `json:"version,omitempty"`
	// Custom marks a TFLite custom operator.
	Custom bool `json:"custom,omitempty"`
	Count  int  `json:"count"`
}

// Opset returns the version of the opset the model imports for domain ("" or
// "ai.onnx" for the default domain), or 0.
func (m *Model) Opset(domain string) int64 {
	if domain == "ai.onnx" {
		domain = ""
	}
	for _, o := range m.Opsets {
		if o.Domain == domain {
			return o.Version
		}
	}
	return 0
}

// Inspect reads and parses the model file at path.
func Inspect(path string) (*Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	m, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", path, err)
	}
	return m, nil
}

// tfliteIdentifier is the flatbuffer file identifier of TFLite models (schema.fbs
// `file_identifier "TFL3"`), stored at bytes 4..8.
var tfliteIdentifier = []byte("TFL3")

// Parse detects the format from the content (a TFLite flatbuffer carries "TFL3" at
// bytes 4..8; anything else is tried as an ONNX protobuf) and parses it.
func Parse(data []byte) (*Model, error) {
	if len(data) >= 8 && bytes.Equal(data[4:8], tfliteIdentifier) {
		m, err := parseTFLite(data)
		if err != nil {
			return nil, fmt.Errorf("tflite: %w", err)
		}
		return m, nil
	}
	m, err := parseONNX(data)
	if err != nil {
		return nil, fmt.Errorf("not a TFLite model (no TFL3 identifier) and not an ONNX model: %w", err)
	}
	return m, nil
}

// opCounter counts operators by (domain, type, version, custom) in first-seen order.
type opCounter struct {
	index map[Operator]int
	ops   []Operator
}

func (c *opCounter) add(op Operator, n int) {
	if c.index == nil {
		c.index = make(map[Operator]int)
	}
	key := op
	key.Count = 0
	if i, ok := c.index[key]; ok {
		c.ops[i].Count += n
		return
	}
	c.index[key] = len(c.ops)
	op.Count = n
	c.ops = append(c.ops, op)
}

// sorted returns the operators most used first, ties by domain, name and version.
func (c *opCounter) sorted() []Operator {
	ops := slices.Clone(c.ops)
	if ops == nil {
		ops = []Operator{}
	}
	slices.SortStableFunc(ops, func(a, b Operator) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Domain, b.Domain),
			cmp.Compare(a.Type, b.Type), cmp.Compare(a.Version, b.Version))
	})
	return ops
}

var errBudget = errors.New("the file references the same data too many times (aliased tables?)")
