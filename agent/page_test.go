package agent

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/vigil-edge/vigil/internal/testkit"
)

// The status page in a real browser (Debian's chromium, which scripts/install-deps
// installs): the camera with its live snapshot and a detection box drawn on it, the sim
// relay, and an event that appears without a reload. The screenshot is kept in
// bin/test-artifacts/ for people to look at.
func TestStatusPageInChromium(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is needed for the status page test: scripts/install-deps installs it")
	}
	r := start(t, testConfig(t, t.TempDir(), ""))
	testkit.WaitFor(t, 30*time.Second, "a detection event", func() bool { return eventOfKind(r.status(t).Events, "detection") != nil })

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.Flag("disable-background-networking", true),
		chromedp.WindowSize(1280, 1400))...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(r.base)); err != nil {
		t.Fatalf("open the status page: %v", err)
	}
	poll := func(what, expr string) {
		t.Helper()
		pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
		defer pcancel()
		if _, err := chromedp.Run(pctx, chromedp.Poll[bool](expr)); err != nil {
			t.Fatalf("the page never showed %s: %v", what, err)
		}
	}
	poll("the camera", `document.querySelector(".cam .name")?.textContent === "door" && document.querySelector(".cam .state")?.textContent === "streaming"`)
	poll("the snapshot", `document.querySelector(".cam img")?.naturalWidth > 0`)
	poll("the samples kept and their upload", `/Samples\s*kept \d+ .*upload off/.test(document.querySelector("#outbox")?.textContent)`)
	// The detection boxes are drawn on the frame by the agent, in (255, 200, 0): count
	// such pixels in the image the page shows.
	poll("a detection box on the snapshot", `(() => {
		const img = document.querySelector(".cam img");
		const c = document.createElement("canvas");
		c.width = img.naturalWidth; c.height = img.naturalHeight;
		const g = c.getContext("2d");
		g.drawImage(img, 0, 0);
		const d = g.getImageData(0, 0, c.width, c.height).data;
		let n = 0;
		for (let i = 0; i < d.length; i += 4) {
			if (d[i] > 220 && d[i+1] > 160 && d[i+1] < 235 && d[i+2] < 70) n++;
		}
		return n > 200;
	})()`)
	poll("the relay", `document.querySelector("#actuators")?.textContent.includes("line-stop")`)

	// A manual command is an event; the page shows it without being reloaded.
	if code, msg := r.post(t, "/api/actuators/line-stop", "s3cret", `{"pulse_ms":300}`); code != http.StatusOK {
		t.Fatalf("pulse: %d %s", code, msg)
	}
	poll("the new actuator event", `document.querySelector("#events")?.textContent.includes("actuator line-stop by hand")`)

	// Manual control from the page, with the change token the page keeps.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`localStorage.setItem("vigil-token", "s3cret");
		document.querySelector('button[data-act="line-stop"][data-cmd="high"]').click()`)); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the relay set high from the page", func() bool {
		return r.agent.parts().actuators["line-stop"].State().State == "high"
	})

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := filepath.Join("..", "bin", "test-artifacts")
	if err := os.MkdirAll(dir, 0o755); err == nil {
		path := filepath.Join(dir, "status-page.png")
		if err := os.WriteFile(path, shot, 0o644); err == nil {
			abs, _ := filepath.Abs(path)
			t.Logf("screenshot: %s", abs)
		}
	}
	if len(shot) < 10000 || !strings.HasPrefix(string(shot[1:4]), "PNG") {
		t.Errorf("screenshot: %d bytes", len(shot))
	}
}
