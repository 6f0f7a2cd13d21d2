package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "vigil ") {
		t.Fatalf("version: %d %q %q", code, out.String(), errb.String())
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"run", "--help"}, {"check-config", "--help"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 || !strings.Contains(out.String()+errb.String(), "Usage") {
			t.Errorf("%v: exit %d, output %q", args, code, out.String()+errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, errb.String())
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("cameras:\n  - {name: door, url: \"pattern://\"}\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("cameras:\n  - {name: door, url: \"pattern://\", detect_fps: -1}\n  - {name: door, url: \"pattern://\"}\n"), 0o644)

	var out, errb bytes.Buffer
	if code := run([]string{"check-config", good}, &out, &errb); code != 0 || !strings.Contains(out.String(), "OK (1 cameras") {
		t.Errorf("good config: %d %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	code := run([]string{"check-config", "--config", bad}, &out, &errb)
	msg := errb.String()
	if code != 2 || !strings.Contains(msg, "2 problem(s)") ||
		!strings.Contains(msg, "cameras[0].detect_fps: -1 must be greater than 0") ||
		!strings.Contains(msg, `cameras[1].name: "door" is already the name of cameras[0]`) {
		t.Errorf("bad config: exit %d\n%s", code, msg)
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("htp: {listen: x}\n"), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"run", "--config", bad}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "htp: unknown key") {
		t.Errorf("run with a bad config: %d %q", code, errb.String())
	}
}
