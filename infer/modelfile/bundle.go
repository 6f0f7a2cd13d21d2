package modelfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vigil-edge/vigil/infer"
)

// CheckBundle loads the model bundle in dir (model.yaml and the model file it names),
// parses the model file and checks the manifest against the model's real inputs and
// outputs: the input size and layout (infer.CheckInput) and that the output decoder
// fits the outputs (infer.NewDecoder). Errors name model.yaml and the key at fault.
//
// The manifest and the model are returned as far as they could be read, also with an
// error, so a caller can show what is there.
func CheckBundle(dir string) (*infer.Manifest, *Model, error) {
	path := filepath.Join(dir, infer.ManifestFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read model bundle: %w", err)
	}
	m, err := infer.ParseManifest(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	model, err := Inspect(m.Path(dir))
	if err != nil {
		return m, nil, fmt.Errorf("%s: file: %w", path, err)
	}
	if err := infer.CheckInput(m, model.Inputs); err != nil {
		return m, model, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := infer.NewDecoder(m, model.Outputs); err != nil {
		if n := fittingLabelCount(m, model.Outputs); n > 0 {
			return m, model, fmt.Errorf("%s: labels: %d labels, but the model's outputs fit the %s decoder with %d classes (%w)",
				path, len(m.Labels), m.Output.Decoder, n, err)
		}
		return m, model, fmt.Errorf("%s: %w", path, withKey("output.decoder", err))
	}
	return m, model, nil
}

// maxLabels bounds the label counts fittingLabelCount tries (output dimensions come
// from the file and may be anything).
const maxLabels = 1 << 16

// fittingLabelCount finds out whether only the number of labels is wrong: it returns a
// label count with which the manifest's decoder accepts the outputs, or 0. The
// decoder itself is the judge, so this holds for every decoder; the candidates are
// each output dimension less the few box and score columns decoders put before the
// classes.
func fittingLabelCount(m *infer.Manifest, outputs []infer.TensorInfo) int {
	tried := map[int64]bool{int64(len(m.Labels)): true}
	for _, out := range outputs {
		for _, d := range out.Shape {
			for _, extra := range []int64{0, 4, 5} {
				n := d - extra
				if n <= 0 || n > maxLabels || tried[n] {
					continue
				}
				tried[n] = true
				alt := *m
				alt.Labels = make([]string, n)
				if _, err := infer.NewDecoder(&alt, outputs); err == nil {
					return int(n)
				}
			}
		}
	}
	return 0
}

// manifestKeys are the model.yaml sections an error may already start with.
var manifestKeys = []string{"name", "version", "task", "file", "backend", "input", "output", "labels", "thresholds"}

// withKey prefixes err with key unless it already names a model.yaml key.
func withKey(key string, err error) error {
	msg := err.Error()
	for _, k := range manifestKeys {
		if strings.HasPrefix(msg, k+":") || strings.HasPrefix(msg, k+".") {
			return err
		}
	}
	return fmt.Errorf("%s: %w", key, err)
}
