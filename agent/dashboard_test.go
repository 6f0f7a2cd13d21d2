// The example Grafana dashboard (configs/) is checked here against the metrics the agent
// exports: configs/ holds no Go code.
package agent_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

var dashboardFile = filepath.Join("..", "configs", "grafana-dashboard.json")

// exported maps every metric name a Vigil agent serves on /metrics (a histogram's
// _bucket, _sum and _count series included) to its label names.
type exported map[string][]string

func (e exported) add(name string, histogram bool, labels []string) {
	if !histogram {
		e[name] = labels
		return
	}
	// A histogram's own name is no series: only these three are.
	e[name+"_bucket"] = append(slices.Clone(labels), "le")
	e[name+"_sum"] = labels
	e[name+"_count"] = labels
}

// vigilMetrics reads the names and labels of the agent's own metrics from its source:
// prometheus.NewDesc(name, help, labels, ...) and the Name of *Opts literals passed to
// prometheus.New*Vec(opts, labels). Reading the source rather than scraping a running
// agent sees every metric, also those a short run would never observe (a vec has no
// series until it is used).
func vigilMetrics(t *testing.T, into exported) {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no agent sources found: %v", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatalf("parsing %s: %v", f, err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "prometheus" {
				return true
			}
			switch fn := sel.Sel.Name; {
			case fn == "NewDesc" && len(call.Args) >= 3:
				into.add(stringLit(t, fset, call.Args[0]), false, stringList(call.Args[2]))
			case strings.HasPrefix(fn, "New") && len(call.Args) >= 1:
				opts, ok := call.Args[0].(*ast.CompositeLit)
				if !ok {
					return true
				}
				var labels []string
				if len(call.Args) >= 2 {
					labels = stringList(call.Args[1])
				}
				for _, elt := range opts.Elts {
					if kv, ok := elt.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Name" {
							into.add(stringLit(t, fset, kv.Value), strings.Contains(fn, "Histogram"), labels)
						}
					}
				}
			}
			return true
		})
	}
}

func stringLit(t *testing.T, fset *token.FileSet, e ast.Expr) string {
	t.Helper()
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		t.Fatalf("%s: a metric name that is not a string literal; teach this test to read it", fset.Position(e.Pos()))
	}
	s, err := strconv.Unquote(lit.Value)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// stringList is the values of a []string{...} literal; nil for anything else.
func stringList(e ast.Expr) []string {
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil
	}
	var out []string
	for _, elt := range lit.Elts {
		if b, ok := elt.(*ast.BasicLit); ok && b.Kind == token.STRING {
			s, _ := strconv.Unquote(b.Value)
			out = append(out, s)
		}
	}
	return out
}

// runtimeMetrics gathers the Go and process collectors the agent registers (agent/metrics.go)
// from the real client library, as the agent serves them.
func runtimeMetrics(t *testing.T, into exported) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		var labels []string
		if len(mf.Metric) > 0 {
			for _, l := range mf.Metric[0].Label {
				labels = append(labels, l.GetName())
			}
		}
		into.add(mf.GetName(), mf.GetType().String() == "HISTOGRAM", labels)
	}
}

// query is one PromQL expression in the dashboard and the legend it is drawn with.
type query struct {
	where, expr, legend string
}

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name, Type string
			Query      any `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name       string          `json:"name"`
			Expr       string          `json:"expr"`
			Datasource json.RawMessage `json:"datasource"`
		} `json:"list"`
	} `json:"annotations"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		Expr         string          `json:"expr"`
		LegendFormat string          `json:"legendFormat"`
		Datasource   json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s is not valid dashboard JSON: %v", dashboardFile, err)
	}
	return d
}

var (
	metricName  = regexp.MustCompile(`\b(?:vigil|process|go)_[a-zA-Z0-9_]+\b`)
	legendLabel = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
	byClause    = regexp.MustCompile(`\bby\s*\(([^)]*)\)`)
	// Labels Prometheus adds to every scraped series.
	targetLabels = []string{"instance", "job"}
)

// TestGrafanaDashboardQueriesExportedMetrics: every metric the dashboard queries is one
// the agent exports, and every label it groups by or shows in a legend is one of that
// metric's labels (or instance/job).
func TestGrafanaDashboardQueriesExportedMetrics(t *testing.T) {
	known := exported{}
	vigilMetrics(t, known)
	runtimeMetrics(t, known)
	for _, must := range []string{"vigil_uptime_seconds", "vigil_camera_fps", "vigil_inference_seconds_bucket", "vigil_actuator_high", "vigil_outbox_depth", "process_cpu_seconds_total"} {
		if _, ok := known[must]; !ok {
			t.Fatalf("the exported metrics read from the source lack %s: the test's reading of agent/metrics.go is broken (%d names found)", must, len(known))
		}
	}

	d := loadDashboard(t)
	var queries []query
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				queries = append(queries, query{where: "panel " + strconv.Quote(p.Title), expr: tg.Expr, legend: tg.LegendFormat})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			queries = append(queries, query{where: "annotation " + strconv.Quote(a.Name), expr: a.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			s, _ := q["query"].(string)
			queries = append(queries, query{where: "variable " + v.Name, expr: s})
		}
	}
	if len(queries) < 20 {
		t.Fatalf("only %d queries found in %s", len(queries), dashboardFile)
	}

	used := map[string]bool{}
	for _, q := range queries {
		names := metricName.FindAllString(q.expr, -1)
		if len(names) == 0 {
			t.Errorf("%s: %q queries no Vigil, process or Go metric", q.where, q.expr)
			continue
		}
		labels := slices.Clone(targetLabels)
		for _, n := range names {
			l, ok := known[n]
			if !ok {
				t.Errorf("%s: %s is not a metric the agent exports (expr %q)", q.where, n, q.expr)
				continue
			}
			used[n] = true
			labels = append(labels, l...)
		}
		var refs []string
		for _, m := range byClause.FindAllStringSubmatch(q.expr, -1) {
			for _, l := range strings.Split(m[1], ",") {
				refs = append(refs, strings.TrimSpace(l))
			}
		}
		for _, m := range legendLabel.FindAllStringSubmatch(q.legend, -1) {
			refs = append(refs, m[1])
		}
		for _, l := range refs {
			if l != "" && !slices.Contains(labels, l) {
				t.Errorf("%s: label %q is not a label of %v (expr %q, legend %q)", q.where, l, names, q.expr, q.legend)
			}
		}
	}

	var unused []string
	for n := range known {
		if strings.HasPrefix(n, "vigil_") && !used[n] && !strings.HasSuffix(n, "_sum") && !strings.HasSuffix(n, "_count") {
			unused = append(unused, n)
		}
	}
	slices.Sort(unused)
	t.Logf("%d queries over %d metrics; Vigil metrics not on the dashboard: %v", len(queries), len(used), unused)
}

// TestGrafanaDashboardImportable: the parts Grafana needs to import the dashboard
// anywhere: a Prometheus data source variable that every query uses, a device
// (instance) variable, unique panel ids, panels inside the 24-column grid.
func TestGrafanaDashboardImportable(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both are needed for a stable import", d.UID, d.Title)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "datasource" && v.Query != "prometheus" {
			t.Errorf("variable %s: a data source variable over %v, want prometheus", v.Name, v.Query)
		}
	}
	if vars["datasource"] != "datasource" {
		t.Errorf("no data source variable named datasource (variables: %v)", vars)
	}
	if vars["instance"] != "query" {
		t.Errorf("no device variable named instance (variables: %v)", vars)
	}
	const want = `"${datasource}"`
	usesVar := func(where string, raw json.RawMessage) {
		var ds struct{ Type, UID string }
		if err := json.Unmarshal(raw, &ds); err != nil || ds.Type != "prometheus" || strconv.Quote(ds.UID) != want {
			t.Errorf("%s: datasource %s, want {type: prometheus, uid: %s}", where, raw, want)
		}
	}
	ids := map[int]string{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			where := "panel " + strconv.Quote(p.Title)
			if other, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("%s: id %d is zero or also used by %s", where, p.ID, other)
			}
			ids[p.ID] = p.Title
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: gridPos %+v is outside the 24-column grid", where, p.GridPos)
			}
			if p.Type != "row" {
				usesVar(where, p.Datasource)
				if len(p.Targets) == 0 {
					t.Errorf("%s: no queries", where)
				}
			}
			for _, tg := range p.Targets {
				usesVar(where+" target", tg.Datasource)
				if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
					t.Errorf("%s: %q does not follow the device variable", where, tg.Expr)
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			usesVar("annotation "+a.Name, a.Datasource)
		}
	}
}
