package deploy

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const validManifest = `{"deployment":"dep-1","action":"deploy","model":"default",
 "bundle":{"name":"yolox-nano","version":"0.2.0"},"size":3000000,
 "sha256":"5f6a9b1c0d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e",
 "key":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
 "signature":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==",
 "transfer":{"via":"chunks","chunks":12,"chunk_size":262144},
 "issued":"2025-03-01T12:00:00.123456789Z"}`

const validRollback = `{"deployment":"rb-1","action":"rollback","model":"default","issued":"2025-03-02T08:00:00Z"}`

func TestParseManifestValid(t *testing.T) {
	m, err := ParseManifest([]byte(validManifest), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{
		Deployment: "dep-1", Action: ActionDeploy, Model: "default",
		Issued: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC),
		Bundle: &BundleRef{Name: "yolox-nano", Version: "0.2.0"}, Size: 3000000,
		SHA256:    "5f6a9b1c0d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e",
		Key:       "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
		Signature: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==",
		Transfer:  &TransferSpec{Via: ViaChunks, Chunks: 12, ChunkSize: 262144},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %+v\nwant %+v", m, want)
	}
	if got, want := m.ChunkLen(0), 262144; got != want {
		t.Errorf("ChunkLen(0) = %d, want %d", got, want)
	}
	if got, want := m.ChunkLen(11), 3000000-11*262144; got != want {
		t.Errorf("ChunkLen(11) = %d, want %d", got, want)
	}
	for _, i := range []int{-1, 12} {
		if got := m.ChunkLen(i); got != -1 {
			t.Errorf("ChunkLen(%d) = %d, want -1", i, got)
		}
	}
	// What Marshal writes parses back to the same manifest.
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseManifest(data, Limits{})
	if err != nil {
		t.Fatalf("re-parse %s: %v", data, err)
	}
	if !reflect.DeepEqual(again, m) {
		t.Fatalf("round trip changed the manifest:\n%+v\n%+v", again, m)
	}

	rb, err := ParseManifest([]byte(validRollback), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if rb.Action != ActionRollback || rb.Model != "default" || rb.Bundle != nil {
		t.Fatalf("rollback parsed as %+v", rb)
	}

	u := strings.Replace(validManifest, `{"via":"chunks","chunks":12,"chunk_size":262144}`, `{"via":"url","url":"https://models.example.com/b.tar"}`, 1)
	if m, err := ParseManifest([]byte(u), Limits{}); err != nil || m.Transfer.URL != "https://models.example.com/b.tar" {
		t.Fatalf("url manifest: %+v, %v", m, err)
	}
}

// edit returns validManifest with the JSON field key set to value (raw JSON), or
// removed when value is "".
func edit(t *testing.T, base, key, value string) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(base), &m); err != nil {
		t.Fatal(err)
	}
	if value == "" {
		delete(m, key)
	} else {
		m[key] = json.RawMessage(value)
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestParseManifestBad(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
		lim              Limits
	}{
		{"empty", "", "empty payload", Limits{}},
		{"not json", "deploy please", "invalid character", Limits{}},
		{"trailing data", validRollback + "{}", "data after the JSON object", Limits{}},
		{"unknown field", edit(t, validManifest, "target", `"door"`), `unknown field "target"`, Limits{}},
		{"unknown nested field", edit(t, validManifest, "transfer", `{"via":"chunks","chunks":12,"chunk_size":262144,"speed":1}`), `unknown field "speed"`, Limits{}},
		{"wrong type", edit(t, validManifest, "size", `"big"`), "size", Limits{}},
		{"missing deployment", edit(t, validManifest, "deployment", ""), "deployment: missing", Limits{}},
		{"bad deployment", edit(t, validManifest, "deployment", `"../etc"`), "deployment: \"../etc\" is not a deployment id", Limits{}},
		{"dotdot deployment", edit(t, validManifest, "deployment", `".."`), "deployment: \"..\" is not a deployment id", Limits{}},
		{"long deployment", edit(t, validManifest, "deployment", `"`+strings.Repeat("a", 65)+`"`), "deployment:", Limits{}},
		{"wildcard deployment", edit(t, validManifest, "deployment", `"a/+"`), "deployment:", Limits{}},
		{"missing action", edit(t, validManifest, "action", ""), "action: missing", Limits{}},
		{"bad action", edit(t, validManifest, "action", `"upgrade"`), `action: "upgrade" is not one of`, Limits{}},
		{"missing model", edit(t, validManifest, "model", ""), "model: missing", Limits{}},
		{"bad model", edit(t, validManifest, "model", `"a b"`), "model: \"a b\" is not a model name", Limits{}},
		{"missing issued", edit(t, validManifest, "issued", ""), "issued: missing", Limits{}},
		{"bad issued", edit(t, validManifest, "issued", `"yesterday"`), "yesterday", Limits{}},
		{"missing bundle", edit(t, validManifest, "bundle", ""), "bundle: missing", Limits{}},
		{"missing bundle name", edit(t, validManifest, "bundle", `{"version":"1"}`), "bundle.name: missing", Limits{}},
		{"bad bundle version", edit(t, validManifest, "bundle", `{"name":"x","version":"../1"}`), "bundle.version:", Limits{}},
		{"missing size", edit(t, validManifest, "size", ""), "size: missing", Limits{}},
		{"negative size", edit(t, validManifest, "size", "-5"), "size: -5 is negative", Limits{}},
		{"oversized", validManifest, "size: 3000000 bytes is over the limit of 1048576 bytes", Limits{MaxBytes: 1 << 20}},
		{"missing sha", edit(t, validManifest, "sha256", ""), "sha256: missing", Limits{}},
		{"upper-case sha", edit(t, validManifest, "sha256", `"5F6A9B1C0D2E3F405162738495A6B7C8D9E0F1A2B3C4D5E6F708192A3B4C5D6E"`), "sha256: ", Limits{}},
		{"short sha", edit(t, validManifest, "sha256", `"abcd"`), "sha256: \"abcd\" is not 64 lowercase hex digits", Limits{}},
		{"missing key", edit(t, validManifest, "key", ""), "key: missing", Limits{}},
		{"bad key base64", edit(t, validManifest, "key", `"not*base64"`), "key: not a base64 Ed25519 public key", Limits{}},
		{"short key", edit(t, validManifest, "key", `"AAAA"`), "key: not a base64 Ed25519 public key", Limits{}},
		{"missing signature", edit(t, validManifest, "signature", ""), "signature: missing", Limits{}},
		{"bad signature", edit(t, validManifest, "signature", `"AAAA"`), "signature: not a base64 Ed25519 signature", Limits{}},
		{"missing transfer", edit(t, validManifest, "transfer", ""), "transfer: missing", Limits{}},
		{"bad via", edit(t, validManifest, "transfer", `{"via":"carrier-pigeon"}`), `transfer.via: "carrier-pigeon" is not one of`, Limits{}},
		{"missing via", edit(t, validManifest, "transfer", `{"chunks":1}`), "transfer.via: missing", Limits{}},
		{"chunk count", edit(t, validManifest, "transfer", `{"via":"chunks","chunks":11,"chunk_size":262144}`), "transfer.chunks: 11 does not fit size 3000000 and chunk_size 262144 (want 12)", Limits{}},
		{"zero chunk size", edit(t, validManifest, "transfer", `{"via":"chunks","chunks":12}`), "transfer.chunk_size: missing", Limits{}},
		{"huge chunk size", edit(t, validManifest, "transfer", `{"via":"chunks","chunks":1,"chunk_size":100000000}`), "transfer.chunk_size: 100000000 is over the limit", Limits{}},
		{"url with chunks", edit(t, validManifest, "transfer", `{"via":"chunks","chunks":12,"chunk_size":262144,"url":"http://x/y"}`), "transfer.url: not allowed", Limits{}},
		{"missing url", edit(t, validManifest, "transfer", `{"via":"url"}`), "transfer.url: missing", Limits{}},
		{"file url", edit(t, validManifest, "transfer", `{"via":"url","url":"file:///etc/passwd"}`), "transfer.url: \"file:///etc/passwd\" is not an http", Limits{}},
		{"rollback with bundle", edit(t, validRollback, "sha256", `"abc"`), `sha256: not allowed with action "rollback"`, Limits{}},
		{"promote with bundle", edit(t, edit(t, validRollback, "action", `"promote"`), "size", "5"), `size: not allowed with action "promote"`, Limits{}},
		{"shadow without bundle", edit(t, validRollback, "action", `"shadow"`), "bundle: missing", Limits{}},
		{"several at once", `{"deployment":"x","action":"deploy","model":"m","issued":"2025-01-01T00:00:00Z"}`, "bundle: missing; key: missing; sha256: missing; signature: missing; size: missing; transfer: missing", Limits{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseManifest([]byte(tc.data), tc.lim)
			if err == nil {
				t.Fatalf("ParseManifest accepted %s as %+v", tc.data, m)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
	if _, err := ParseManifest(nil, Limits{}); !errors.Is(err, ErrEmptyManifest) {
		t.Errorf("empty payload: %v, want ErrEmptyManifest", err)
	}
}

func TestTopics(t *testing.T) {
	dev, grp := Target{Device: "gate-07"}, Target{Group: "line-3"}
	for _, tc := range []struct{ got, want string }{
		{dev.DeployTopic("vigil"), "vigil/gate-07/models/deploy"},
		{grp.DeployTopic("vigil"), "vigil/group/line-3/models/deploy"},
		{dev.ChunkTopic("vigil", "d1", 7), "vigil/gate-07/models/chunks/d1/7"},
		{grp.ChunkTopic("site/a", "d1", 0), "site/a/group/line-3/models/chunks/d1/0"},
		{grp.ChunkFilter("vigil", "d1"), "vigil/group/line-3/models/chunks/d1/+"},
		{StateTopic("vigil", "gate-07"), "vigil/gate-07/models/state"},
		{StatusTopic("vigil", "gate-07"), "vigil/gate-07/status"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	for _, tc := range []struct {
		topic string
		want  Target
		ok    bool
	}{
		{"vigil/gate-07/models/deploy", dev, true},
		{"vigil/group/line-3/models/deploy", grp, true},
		{"site/a/group/line-3/models/deploy", Target{}, false}, // prefix is "vigil"
		{"vigil/models/deploy", Target{}, false},
		{"vigil/a/b/models/deploy", Target{}, false},
		{"vigil/gate-07/models/state", Target{}, false},
	} {
		got, err := TargetOf("vigil", tc.topic)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("TargetOf(%q) = %+v, %v; want %+v, ok %v", tc.topic, got, err, tc.want, tc.ok)
		}
	}
	if got, err := TargetOf("site/a", "site/a/group/line-3/models/deploy"); err != nil || got != grp {
		t.Errorf("TargetOf with a two-level prefix: %+v, %v", got, err)
	}
	for _, tc := range []struct {
		topic string
		dep   string
		i     int
		ok    bool
	}{
		{"vigil/gate-07/models/chunks/d1/7", "d1", 7, true},
		{"vigil/group/g/models/chunks/d.2_x/0", "d.2_x", 0, true},
		{"vigil/gate-07/models/chunks/d1/07", "", 0, false},
		{"vigil/gate-07/models/chunks/d1/-1", "", 0, false},
		{"vigil/gate-07/models/chunks/d1/+1", "", 0, false},
		{"vigil/gate-07/models/chunks/d1/", "", 0, false},
		{"vigil/gate-07/models/chunks/../1", "", 0, false},
		{"vigil/gate-07/models/deploy/d1/1", "", 0, false},
		{"d1/1", "", 0, false},
	} {
		dep, i, err := ParseChunkTopic(tc.topic)
		if (err == nil) != tc.ok || dep != tc.dep || i != tc.i {
			t.Errorf("ParseChunkTopic(%q) = %q, %d, %v; want %q, %d, ok %v", tc.topic, dep, i, err, tc.dep, tc.i, tc.ok)
		}
	}
}

func TestPhaseFinal(t *testing.T) {
	final := map[Phase]bool{PhaseActive: true, PhaseRejected: true, PhaseRolledBack: true, PhaseShadowing: true, PhaseDiscarded: true}
	for _, p := range []Phase{PhaseReceived, PhaseDownloading, PhaseVerifying, PhaseStaging, PhaseWarming, PhaseActive, PhaseRejected, PhaseRolledBack, PhaseShadowing, PhaseDiscarded} {
		if p.Final() != final[p] {
			t.Errorf("%s.Final() = %v", p, p.Final())
		}
	}
}

// FuzzParseManifest: no input crashes the parser, and whatever it accepts is valid,
// survives Marshal and parses back to the same manifest.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(validManifest))
	f.Add([]byte(validRollback))
	f.Add([]byte(strings.Replace(validManifest, `{"via":"chunks","chunks":12,"chunk_size":262144}`, `{"via":"url","url":"https://h/b.tar"}`, 1)))
	f.Add([]byte(`{"deployment":"x","action":"deploy","size":-1,"transfer":{"via":"chunks","chunks":-3,"chunk_size":-1}}`))
	f.Add([]byte(`{"size":9223372036854775807,"transfer":{"via":"chunks","chunks":2147483647,"chunk_size":1}}`))
	f.Add([]byte(``))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{MaxBytes: 1 << 40}
		m, err := ParseManifest(data, lim)
		if err != nil {
			if m != nil {
				t.Fatal("a manifest with an error")
			}
			return
		}
		if err := m.Validate(lim); err != nil {
			t.Fatalf("accepted manifest does not validate: %v", err)
		}
		if m.Action == ActionDeploy && m.Transfer.Via == ViaChunks {
			var total int64
			for i := range m.Transfer.Chunks {
				n := m.ChunkLen(i)
				if n <= 0 || n > m.Transfer.ChunkSize {
					t.Fatalf("chunk %d of %d has length %d", i, m.Transfer.Chunks, n)
				}
				total += int64(n)
			}
			if total != m.Size {
				t.Fatalf("chunks add up to %d, size is %d", total, m.Size)
			}
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseManifest(out, lim)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip changed %+v into %+v", m, again)
		}
	})
}

func TestParseManifestTooManyChunks(t *testing.T) {
	data := edit(t, validManifest, "transfer", `{"via":"chunks","chunks":3000000,"chunk_size":1}`)
	if _, err := ParseManifest([]byte(data), Limits{}); err == nil || !strings.Contains(err.Error(), "transfer.chunk_size: 1 makes 3000000 chunks, over the limit of 65536") {
		t.Fatalf("err = %v", err)
	}
}
