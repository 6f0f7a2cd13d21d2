package main

import (
	"bytes"
	"strings"
	"testing"
)

// Every command of the table is listed by 'vigil --help' and answers --help with its
// usage and exit status 0; every group lists its sub-commands.
func TestCommandTable(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"help"}, &out, &errb); code != exitOK {
		t.Fatalf("vigil help: exit %d", code)
	}
	top := out.String()
	for _, c := range commands() {
		if c.subs == nil {
			if !strings.Contains(top, "\n  "+c.name+" ") {
				t.Errorf("vigil --help does not list %s", c.name)
			}
			if c.name != "version" {
				checkHelp(t, c.name)
			}
			continue
		}
		out.Reset()
		if code := run([]string{c.name}, &errb, &out); code != exitUsage {
			t.Errorf("vigil %s: exit %d", c.name, code)
		}
		for _, s := range c.subs {
			if !strings.Contains(top, "\n  "+c.name+" "+s.name+" ") {
				t.Errorf("vigil --help does not list %s %s", c.name, s.name)
			}
			if !strings.Contains(out.String(), "vigil "+c.name+" "+s.name+" "+s.args+"\n") {
				t.Errorf("vigil %s does not show %s's synopsis:\n%s", c.name, s.name, out.String())
			}
			checkHelp(t, c.name, s.name)
		}
	}
}

func checkHelp(t *testing.T, words ...string) {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(append(words, "--help"), &out, &errb); code != exitOK || !strings.Contains(out.String()+errb.String(), "Usage: vigil "+strings.Join(words, " ")) {
		t.Errorf("vigil %s --help: exit %d\n%s%s", strings.Join(words, " "), code, out.String(), errb.String())
	}
}
