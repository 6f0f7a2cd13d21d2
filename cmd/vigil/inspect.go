package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"gopkg.in/yaml.v3"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/modelfile"
)

const inspectUsage = `Usage: vigil model inspect FILE|BUNDLE_DIR [--json]

Shows a model file's format, opset or schema version, producer, inputs and outputs
(element types, shapes, quantisation) and operators, read from the file itself (ONNX or
TFLite) without any inference runtime. For a bundle directory (model.yaml and the model
file it names) it also shows the manifest and checks it against the model: exit status 0
when it fits, 1 when it does not or a file cannot be read (the message names the
model.yaml key), 2 on usage errors.

Flags:
`

// inspectReport is what --json prints.
type inspectReport struct {
	Path string `json:"path"`
	// Bundle is model.yaml as read (defaults filled in), for a bundle directory.
	Bundle map[string]any   `json:"bundle,omitempty"`
	Model  *modelfile.Model `json:"model"`
	// OK says the model file could be read and, for a bundle, model.yaml fits it;
	// Error says why not.
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func inspectModel(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("model inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print a JSON report (for scripts) instead of tables")
	fs.Usage = func() {
		fmt.Fprint(stderr, inspectUsage)
		fs.PrintDefaults()
	}
	// The flag package stops at the first argument that is not a flag; take the path
	// and go on, so --json may come before or after it.
	var paths []string
	for {
		if err := fs.Parse(args); err != nil {
			return parseExit(err)
		}
		if fs.NArg() == 0 {
			break
		}
		paths = append(paths, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(paths) != 1 {
		fmt.Fprintf(stderr, "vigil model inspect: want one FILE or BUNDLE_DIR, got %d\n\n", len(paths))
		fs.Usage()
		return exitUsage
	}
	rep := inspectReport{Path: paths[0]}
	var manifest *infer.Manifest
	var err error
	if fi, statErr := os.Stat(rep.Path); statErr == nil && fi.IsDir() {
		manifest, rep.Model, err = modelfile.CheckBundle(rep.Path)
		if manifest != nil {
			rep.Bundle = manifestMap(manifest)
		}
	} else {
		rep.Model, err = modelfile.Inspect(rep.Path)
	}
	rep.OK = err == nil
	if err != nil {
		rep.Error = err.Error()
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "vigil model inspect: %v\n", err)
			return exitFailed
		}
	} else {
		printReport(stdout, rep.Path, manifest, rep.Model, err)
	}
	if err != nil {
		fmt.Fprintf(stderr, "vigil model inspect: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// manifestMap is the manifest with its model.yaml keys, for JSON.
func manifestMap(m *infer.Manifest) map[string]any {
	var out map[string]any
	data, err := yaml.Marshal(m)
	if err == nil {
		err = yaml.Unmarshal(data, &out)
	}
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	return out
}

func printReport(w io.Writer, path string, m *infer.Manifest, model *modelfile.Model, checkErr error) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(cells ...any) {
		for i, c := range cells {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, c)
		}
		fmt.Fprintln(tw)
	}
	if m != nil {
		in, out := m.Input, m.Output
		row("bundle", path)
		row("name", fmt.Sprintf("%s %s (task %s, backend %s)", m.Name, m.Version, m.Task, orNone(m.Backend)))
		row("file", m.File)
		row("input", fmt.Sprintf("%dx%d %s %s, %s %s, pad %v, mean %v, scale %v",
			in.Width, in.Height, in.Layout, in.Color, in.Resize, in.Align, in.PadValue(), in.Mean, in.Scale))
		row("output", fmt.Sprintf("decoder %s, strides %v, nms %s", out.Decoder, out.Strides, out.NMS))
		row("labels", fmt.Sprintf("%d (%s)", len(m.Labels), firstLabels(m.Labels, 5)))
		row("thresholds", fmt.Sprintf("score %v, nms_iou %v", m.Thresholds.Score, m.Thresholds.NMSIoU))
		row()
	}
	if model != nil {
		if m == nil {
			row("model", path)
		}
		switch model.Format {
		case modelfile.ONNX:
			row("format", fmt.Sprintf("ONNX, IR version %d", model.IRVersion))
			var opsets []string
			for _, o := range model.Opsets {
				opsets = append(opsets, fmt.Sprintf("%s %d", domain(o.Domain), o.Version))
			}
			row("opsets", orNone(strings.Join(opsets, ", ")))
			row("producer", orNone(strings.TrimSpace(model.Producer+" "+model.ProducerVersion)))
			if model.ExternalTensors > 0 {
				row("external", fmt.Sprintf("%d tensors keep their data in files beside the model", model.ExternalTensors))
			}
		case modelfile.TFLite:
			row("format", fmt.Sprintf("TFLite, schema version %d, %d subgraph(s)", model.SchemaVersion, model.Subgraphs))
			row("description", orNone(model.Description))
		}
		tw.Flush()
		for _, sec := range []struct {
			title   string
			tensors []infer.TensorInfo
		}{{"inputs", model.Inputs}, {"outputs", model.Outputs}} {
			fmt.Fprintf(w, "\n%s (%d)\n", sec.title, len(sec.tensors))
			row("  name", "type", "shape", "quantisation")
			for _, t := range sec.tensors {
				q := "-"
				if t.Quant != nil {
					q = fmt.Sprintf("scale %g, zero point %d", t.Quant.Scale, t.Quant.ZeroPoint)
				}
				row("  "+t.Name, t.Type, shape(t.Shape), q)
			}
			tw.Flush()
		}
		nodes := 0
		for _, op := range model.Operators {
			nodes += op.Count
		}
		fmt.Fprintf(w, "\noperators (%d types, %d nodes)\n", len(model.Operators), nodes)
		if model.Format == modelfile.TFLite {
			row("  operator", "version", "count")
			for _, op := range model.Operators {
				name := op.Type
				if op.Custom {
					name += " (custom)"
				}
				row("  "+name, op.Version, op.Count)
			}
		} else {
			row("  operator", "domain", "count")
			for _, op := range model.Operators {
				row("  "+op.Type, domain(op.Domain), op.Count)
			}
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	switch {
	case checkErr != nil:
		row("check", "FAILED (see the error below)")
	case m != nil:
		row("check", "OK: model.yaml fits the model")
	}
	tw.Flush()
}

func shape(s []int64) string {
	if s == nil {
		return "unknown"
	}
	dims := make([]string, len(s))
	for i, d := range s {
		dims[i] = fmt.Sprint(d)
		if d < 0 {
			dims[i] = "?"
		}
	}
	return "[" + strings.Join(dims, " ") + "]"
}

func domain(d string) string {
	if d == "" {
		return "ai.onnx"
	}
	return d
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func firstLabels(labels []string, n int) string {
	if len(labels) <= n {
		return strings.Join(labels, ", ")
	}
	return strings.Join(labels[:n], ", ") + ", ..."
}
